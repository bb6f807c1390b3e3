using System.Globalization;
using System.IO.Compression;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.IO;

/// <summary>
/// NumPy <c>.npz</c> archives of float arrays: a zip of <c>NAME.npy</c> entries, as written by
/// <c>np.savez</c> / <c>np.savez_compressed</c>. This is the format of published FID reference
/// statistics (pytorch-fid, EDM: keys <c>mu</c> and <c>sigma</c>), so they can be used as they are.
/// Reads '&lt;f8' and '&lt;f4' arrays (C or Fortran order, .npy format 1.0 to 3.0); writes
/// '&lt;f8' / '&lt;f4' in C order with a format 1.0 header, uncompressed like <c>np.savez</c>.
/// </summary>
internal static class Npz
{
    static readonly byte[] Magic = { 0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y' };

    /// <summary>
    /// Reads the arrays of an .npz file as CPU tensors (Float64 for '&lt;f8', Float32 for '&lt;f4'), keyed by
    /// name without the ".npy" suffix. With <paramref name="keys"/> given, only those are read and each
    /// must be present; otherwise every entry is read.
    /// </summary>
    public static Dictionary<string, Tensor> Load(string path, params string[] keys)
    {
        if (!File.Exists(path)) throw new DmdInputException($"statistics file not found: {path}");
        ZipArchive zip;
        try { zip = ZipFile.OpenRead(path); }
        catch (InvalidDataException e)
        {
            throw new DmdInputException($"{path} is not an .npz archive (not a readable zip file: {e.Message}); " +
                                        "write it with numpy.savez or re-download it", e);
        }
        using (zip)
        {
            var entries = zip.Entries.Where(e => e.FullName.EndsWith(".npy", StringComparison.Ordinal))
                .ToDictionary(e => e.FullName[..^4], e => e);
            var missing = keys.Where(k => !entries.ContainsKey(k)).ToList();
            if (missing.Count > 0)
                throw new DmdInputException($"{path} lacks array(s) {string.Join(", ", missing)} " +
                                            $"(it has: {(entries.Count == 0 ? "none" : string.Join(", ", entries.Keys))})");
            var result = new Dictionary<string, Tensor>();
            try
            {
                foreach (var key in keys.Length > 0 ? keys : entries.Keys.ToArray())
                {
                    using var s = entries[key].Open();
                    result[key] = ReadNpy(s, $"{path}:{key}");
                }
            }
            catch (Exception e) when (e is InvalidDataException or EndOfStreamException or IOException)
            {
                foreach (var t in result.Values) t.Dispose();
                throw new DmdInputException($"{path} is corrupt ({e.Message}); re-create or re-download it", e);
            }
            catch
            {
                foreach (var t in result.Values) t.Dispose();
                throw;
            }
            return result;
        }
    }

    /// <summary>
    /// Writes float tensors (Float64 as '&lt;f8', Float32 as '&lt;f4', any shape) to an .npz file, atomically,
    /// readable by <c>numpy.load</c>. The values are stored bit for bit.
    /// </summary>
    public static void Save(string path, IReadOnlyDictionary<string, Tensor> arrays)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        string tmp = path + ".tmp";
        using (var file = File.Create(tmp))
        using (var zip = new ZipArchive(file, ZipArchiveMode.Create))
        {
            foreach (var (name, tensor) in arrays)
            {
                var entry = zip.CreateEntry(name + ".npy", CompressionLevel.NoCompression);
                using var s = entry.Open();
                WriteNpy(s, tensor);
            }
        }
        File.Move(tmp, path, overwrite: true);
    }

    /// <summary>Writes one array in .npy format 1.0: magic, version, header length, Python-dict header, raw data.</summary>
    internal static void WriteNpy(Stream s, Tensor tensor)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("npy writing assumes a little-endian machine");
        string descr = tensor.dtype switch
        {
            ScalarType.Float64 => "<f8",
            ScalarType.Float32 => "<f4",
            _ => throw new ArgumentException($"npz: only Float64 and Float32 arrays can be written, got {tensor.dtype}"),
        };
        string shape = tensor.shape.Length switch
        {
            0 => "()",
            1 => $"({tensor.shape[0]},)",
            _ => "(" + string.Join(", ", tensor.shape) + ")",
        };
        string dict = $"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}";
        // pad with spaces so that magic + version + length + header (ending in '\n') is a multiple of 64 bytes
        int total = 10 + dict.Length + 1;
        int padded = (total + 63) / 64 * 64;
        if (padded - 10 > ushort.MaxValue) throw new ArgumentException("npz: array has too many dimensions for a format 1.0 header");
        string header = dict + new string(' ', padded - total) + "\n";

        s.Write(Magic);
        s.WriteByte(1); s.WriteByte(0);
        Span<byte> len = stackalloc byte[2];
        len[0] = (byte)(header.Length & 0xff); len[1] = (byte)(header.Length >> 8);
        s.Write(len);
        s.Write(Encoding.ASCII.GetBytes(header));

        using var c = tensor.detach().cpu().contiguous();
        if (c.numel() == 0) return;
        if (c.dtype == ScalarType.Float64) s.Write(MemoryMarshal.AsBytes(c.data<double>().ToArray().AsSpan()));
        else s.Write(MemoryMarshal.AsBytes(c.data<float>().ToArray().AsSpan()));
    }

    /// <summary>Reads one .npy array; <paramref name="name"/> is used in error messages.</summary>
    internal static Tensor ReadNpy(Stream s, string name)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("npy reading assumes a little-endian machine");
        var prefix = ReadExactly(s, 8);
        if (!prefix.AsSpan(0, 6).SequenceEqual(Magic))
            throw new InvalidDataException($"{name} is not a .npy array (bad magic)");
        int major = prefix[6];
        int headerLen = major switch
        {
            1 => BitConverter.ToUInt16(ReadExactly(s, 2)),
            2 or 3 => checked((int)BitConverter.ToUInt32(ReadExactly(s, 4))),
            _ => throw new DmdInputException($"{name}: unsupported .npy format version {major}.{prefix[7]}"),
        };
        string header = (major == 3 ? Encoding.UTF8 : Encoding.Latin1).GetString(ReadExactly(s, headerLen));

        string descr = Field(header, @"'descr'\s*:\s*'([^']*)'", name);
        bool fortran = Field(header, @"'fortran_order'\s*:\s*(True|False)", name) == "True";
        long[] shape = Field(header, @"'shape'\s*:\s*\(([^)]*)\)", name)
            .Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(d => long.Parse(d, CultureInfo.InvariantCulture)).ToArray();
        long count = shape.Aggregate(1L, (a, b) => checked(a * b));

        // Fortran order stores the transpose in C order: read with the reversed shape, then permute back.
        long[] stored = fortran ? shape.Reverse().ToArray() : shape;
        Tensor t = descr switch
        {
            "<f8" => torch.tensor(MemoryMarshal.Cast<byte, double>(ReadExactly(s, checked(count * 8))).ToArray(), stored),
            "<f4" => torch.tensor(MemoryMarshal.Cast<byte, float>(ReadExactly(s, checked(count * 4))).ToArray(), stored),
            _ => throw new DmdInputException($"{name}: unsupported array type '{descr}' (only little-endian float64 '<f8' " +
                                             "and float32 '<f4' are read; convert with arr.astype(np.float64))"),
        };
        if (fortran && shape.Length > 1)
        {
            using var f = t;
            t = f.permute(Enumerable.Range(0, shape.Length).Reverse().Select(i => (long)i).ToArray()).contiguous();
        }
        return t;
    }

    static string Field(string header, string pattern, string name)
    {
        var m = Regex.Match(header, pattern);
        if (!m.Success) throw new InvalidDataException($"{name} has an unreadable .npy header: {header.Trim()}");
        return m.Groups[1].Value;
    }

    static byte[] ReadExactly(Stream s, long n)
    {
        var buf = new byte[n];
        s.ReadExactly(buf);
        return buf;
    }
}
