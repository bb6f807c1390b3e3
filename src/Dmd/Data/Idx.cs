using System.Buffers.Binary;
using System.IO.Compression;
using System.Runtime.InteropServices;
using Dmd.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Data;

/// <summary>
/// IDX files, the format of MNIST and Fashion-MNIST: the magic bytes 00 00 TYPE NDIMS, NDIMS big-endian
/// int32 sizes, then the values in row-major order (big-endian when wider than a byte). Files may be
/// gzip-compressed; compression is recognised by its magic bytes (1f 8b), not by the file name.
/// </summary>
internal static class Idx
{
    // type code -> (bytes per value, tensor dtype)
    static readonly Dictionary<byte, (int Size, ScalarType Dtype, string Name)> Types = new()
    {
        [0x08] = (1, ScalarType.Byte, "ubyte"),
        [0x09] = (1, ScalarType.Int8, "sbyte"),
        [0x0B] = (2, ScalarType.Int16, "int16"),
        [0x0C] = (4, ScalarType.Int32, "int32"),
        [0x0D] = (4, ScalarType.Float32, "float32"),
        [0x0E] = (8, ScalarType.Float64, "float64"),
    };

    /// <summary>
    /// Reads an IDX file (raw or gzip) into a tensor of its own shape and type (ubyte gives uint8).
    /// A missing, truncated or malformed file is a <see cref="DmdInputException"/> that names it.
    /// </summary>
    public static Tensor Read(string path)
    {
        var bytes = ReadBytes(path);
        if (bytes.Length < 4)
            throw Bad(path, $"only {bytes.Length} bytes, shorter than the 4-byte IDX header; the file is truncated");
        if (bytes[0] != 0 || bytes[1] != 0)
            throw Bad(path, $"wrong magic number {bytes[0]:x2} {bytes[1]:x2} {bytes[2]:x2} {bytes[3]:x2} (an IDX file starts with 00 00 TYPE NDIMS); is this an MNIST-style file?");
        if (!Types.TryGetValue(bytes[2], out var type))
            throw Bad(path, $"unsupported value type 0x{bytes[2]:x2} (IDX types are 08 ubyte, 09 sbyte, 0B int16, 0C int32, 0D float32, 0E float64)");
        int ndims = bytes[3];
        if (ndims == 0) throw Bad(path, "the header declares 0 dimensions");
        int header = 4 + 4 * ndims;
        if (bytes.Length < header)
            throw Bad(path, $"only {bytes.Length} bytes, shorter than its {header}-byte header; the file is truncated");

        var dims = new long[ndims];
        long count = 1;
        for (int i = 0; i < ndims; i++)
        {
            dims[i] = BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(4 + 4 * i));
            if (dims[i] < 0) throw Bad(path, $"dimension {i} has a negative size ({dims[i]})");
            count *= dims[i];
            if (count > int.MaxValue) throw Bad(path, $"the declared shape [{string.Join(", ", dims)}] is too large");
        }
        long expected = header + count * type.Size;
        if (bytes.Length < expected)
            throw Bad(path, $"truncated: the header declares shape [{string.Join(", ", dims)}] ({expected} bytes) but the file has only {bytes.Length} bytes; download it again");
        if (bytes.Length > expected)
            throw Bad(path, $"{bytes.Length - expected} unexpected bytes after the data of shape [{string.Join(", ", dims)}]; the file is damaged or not an IDX file");

        var data = bytes.AsSpan(header);
        if (type.Size > 1 && BitConverter.IsLittleEndian)
            for (int i = 0; i < data.Length; i += type.Size) data.Slice(i, type.Size).Reverse();
        var t = empty(dims, dtype: type.Dtype);
        switch (type.Dtype)
        {
            case ScalarType.Byte: Fill<byte>(t, data); break;
            case ScalarType.Int8: Fill<sbyte>(t, data); break;
            case ScalarType.Int16: Fill<short>(t, data); break;
            case ScalarType.Int32: Fill<int>(t, data); break;
            case ScalarType.Float32: Fill<float>(t, data); break;
            default: Fill<double>(t, data); break;
        }
        return t;
    }

    /// <summary>
    /// Reads a pair of IDX files, images (N, H, W) and labels (N), both ubyte, and checks that they agree.
    /// Returns images as uint8 (N, H, W) and labels as int64 (N).
    /// </summary>
    public static (Tensor Images, Tensor Labels) ReadImagesAndLabels(string imagesPath, string labelsPath)
    {
        var images = Read(imagesPath);
        var labels = Read(labelsPath);
        if (images.dtype != ScalarType.Byte || images.dim() != 3)
            throw Bad(imagesPath, $"expected ubyte images of shape (N, H, W) but found {Describe(images)}; is this the labels file?");
        if (labels.dtype != ScalarType.Byte || labels.dim() != 1)
            throw Bad(labelsPath, $"expected ubyte labels of shape (N) but found {Describe(labels)}; is this the images file?");
        if (images.shape[0] != labels.shape[0])
            throw new DmdInputException($"{imagesPath} has {images.shape[0]} images but {labelsPath} has {labels.shape[0]} labels; the two files must come from the same split");
        return (images, labels.to(ScalarType.Int64));
    }

    /// <summary>Writes a tensor as an IDX file (gzip-compressed when the name ends in .gz).</summary>
    internal static void Write(string path, Tensor t)
    {
        var type = Types.First(kv => kv.Value.Dtype == t.dtype);
        var c = t.cpu().contiguous();
        var data = type.Value.Dtype switch
        {
            ScalarType.Byte => c.data<byte>().ToArray(),
            ScalarType.Int8 => Bytes(c.data<sbyte>().ToArray()),
            ScalarType.Int16 => Bytes(c.data<short>().ToArray()),
            ScalarType.Int32 => Bytes(c.data<int>().ToArray()),
            ScalarType.Float32 => Bytes(c.data<float>().ToArray()),
            _ => Bytes(c.data<double>().ToArray()),
        };
        if (type.Value.Size > 1 && BitConverter.IsLittleEndian)
            for (int i = 0; i < data.Length; i += type.Value.Size) data.AsSpan(i, type.Value.Size).Reverse();
        var header = new byte[4 + 4 * c.dim()];
        header[2] = type.Key;
        header[3] = (byte)c.dim();
        for (int i = 0; i < c.dim(); i++) BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4 + 4 * i), (int)c.shape[i]);

        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        using var fs = File.Create(path);
        using Stream s = path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase) ? new GZipStream(fs, CompressionLevel.Fastest) : fs;
        s.Write(header);
        s.Write(data);
    }

    static void Fill<T>(Tensor t, ReadOnlySpan<byte> data) where T : unmanaged =>
        t.data<T>().CopyFrom(MemoryMarshal.Cast<byte, T>(data), 0, 0);

    static byte[] Bytes<T>(T[] values) where T : unmanaged => MemoryMarshal.AsBytes(values.AsSpan()).ToArray();

    static byte[] ReadBytes(string path)
    {
        if (!File.Exists(path)) throw new DmdInputException($"IDX file not found: {path}");
        var raw = File.ReadAllBytes(path);
        if (raw.Length < 2 || raw[0] != 0x1f || raw[1] != 0x8b) return raw;
        try
        {
            using var gz = new GZipStream(new MemoryStream(raw), CompressionMode.Decompress);
            using var ms = new MemoryStream(raw.Length * 2);
            gz.CopyTo(ms);
            return ms.ToArray();
        }
        catch (InvalidDataException e)
        {
            throw Bad(path, $"the gzip data is damaged or truncated ({e.Message}); download it again", e);
        }
    }

    static string Describe(Tensor t) => $"{Types.Values.First(v => v.Dtype == t.dtype).Name} of shape [{string.Join(", ", t.shape)}]";

    static DmdInputException Bad(string path, string problem, Exception? inner = null) =>
        new($"{path}: {problem}", inner);
}
