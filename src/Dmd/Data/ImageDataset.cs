using Dmd.IO;
using SkiaSharp;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Data;

/// <summary>
/// Images held in memory as one uint8 tensor (N, C, H, W), with optional class labels. Batches come out as
/// float32 in [-1, 1] (x / 127.5 - 1), the range of EDM's networks, with one-hot labels.
/// </summary>
public sealed class ImageDataset : IDataSource
{
    /// <summary>All images, uint8 (N, C, H, W).</summary>
    public Tensor Images { get; }
    /// <summary>Class index per image, int64 (N), or null.</summary>
    public Tensor? ClassIndex { get; }
    /// <summary>Number of classes (0 when unlabelled).</summary>
    public int NumClasses { get; }
    /// <summary>A name per class (index order), or null.</summary>
    public IReadOnlyList<string>? ClassNames { get; }
    /// <summary>Mirror each drawn image left-right with probability 1/2 (EDM's --xflip).</summary>
    public bool RandomFlip { get; }

    /// <summary>Wraps images already in memory; a wrong dtype or shape, or labels out of range, is an <see cref="ArgumentException"/>.</summary>
    /// <param name="images">uint8 (N, C, H, W); kept as a contiguous CPU tensor.</param>
    /// <param name="classIndex">Class index per image, (N) in [0, <paramref name="numClasses"/>); null = unlabelled.</param>
    /// <param name="numClasses">Number of classes; taken as 0 when there are no labels.</param>
    /// <param name="classNames">A name per class (index order) or null; dropped when there are no labels.</param>
    /// <param name="randomFlip">Mirror each drawn image left-right with probability 1/2.</param>
    public ImageDataset(Tensor images, Tensor? classIndex = null, int numClasses = 0,
                        IReadOnlyList<string>? classNames = null, bool randomFlip = false)
    {
        if (images.dtype != ScalarType.Byte || images.dim() != 4)
            throw new ArgumentException($"images must be uint8 (N, C, H, W), got {images.dtype} [{string.Join(", ", images.shape)}]");
        if (classIndex is not null)
        {
            if (classIndex.dim() != 1 || classIndex.shape[0] != images.shape[0])
                throw new ArgumentException($"classIndex must be (N) = ({images.shape[0]}), got [{string.Join(", ", classIndex.shape)}]");
            if (numClasses < 1 || (classIndex.numel() > 0 && (classIndex.min().item<long>() < 0 || classIndex.max().item<long>() >= numClasses)))
                throw new ArgumentException($"class indices must lie in [0, {numClasses})");
            if (classNames is not null && classNames.Count != numClasses)
                throw new ArgumentException($"{classNames.Count} class names for {numClasses} classes");
        }
        Images = images.cpu().contiguous();
        ClassIndex = classIndex?.to(ScalarType.Int64).cpu();
        NumClasses = classIndex is null ? 0 : numClasses;
        ClassNames = classIndex is null ? null : classNames;
        RandomFlip = randomFlip;
    }

    /// <summary>(C, H, W).</summary>
    public int[] Shape => Images.shape.Skip(1).Select(d => (int)d).ToArray();
    /// <summary>Number of images N.</summary>
    public long Count => Images.shape[0];

    /// <summary>
    /// A random batch (with replacement): images float32 (n, C, H, W) in [-1, 1] and one-hot labels (n, classes)
    /// or null. Draws the indices, then (with <see cref="RandomFlip"/>) one coin per image, from <paramref name="g"/>.
    /// </summary>
    public (Tensor X, Tensor? Labels) Batch(int n, Generator? g) => Take(Rng.Integers(0, Count, n, g), g);

    /// <inheritdoc/>
    /// <remarks>Draws the indices, then (with <see cref="RandomFlip"/>) one coin per image, from <paramref name="g"/>.</remarks>
    public (Tensor X, Tensor? Labels) BatchOfClasses(Tensor classIndex, Generator? g)
    {
        if (ClassIndex is null) throw new DmdInputException("a class-matched batch needs class-labelled images, and these have no labels");
        classRuns ??= new ClassRuns(ClassIndex, NumClasses);
        return Take(classRuns.Draw(classIndex, g), g);
    }

    ClassRuns? classRuns;

    /// <summary>The images at <paramref name="idx"/> as float32, flipped (with <see cref="RandomFlip"/>) by coins from <paramref name="g"/>, and their labels.</summary>
    (Tensor X, Tensor? Labels) Take(Tensor idx, Generator? g)
    {
        long n = idx.shape[0];
        var x = ToFloat(Images.index_select(0, idx));
        if (RandomFlip)
        {
            var flip = (Rng.Uniform(new long[] { n }, g) < 0.5).view(n, 1, 1, 1);
            x = where(flip, x.flip(3), x);
        }
        var y = ClassIndex is null ? null : Rng.OneHot(ClassIndex.index_select(0, idx), NumClasses);
        return (x, y);
    }

    /// <summary>The same images without labels (for unconditional training).</summary>
    public ImageDataset WithoutLabels() => new(Images, null, 0, null, RandomFlip);

    /// <summary>The first <paramref name="n"/> images (all of them when there are fewer), labels and flips kept.</summary>
    public ImageDataset First(int n)
    {
        int m = (int)Math.Min(n, Count);
        return new ImageDataset(Images[..m], ClassIndex?[..m], NumClasses, ClassNames, RandomFlip);
    }

    /// <summary>The same images and labels, with random flips switched on or off.</summary>
    public ImageDataset WithRandomFlip(bool on) => new(Images, ClassIndex, NumClasses, ClassNames, on);

    /// <summary>uint8 in [0, 255] to float32 in [-1, 1].</summary>
    public static Tensor ToFloat(Tensor images) => images.to(ScalarType.Float32) / 127.5f - 1f;

    static readonly string[] Extensions = { ".png", ".jpg", ".jpeg", ".bmp", ".webp" };

    /// <summary>
    /// Loads a folder of images (PNG, JPEG, BMP, WebP; any size). Each image's short side is resized to
    /// <paramref name="resolution"/> and the centre square cropped; transparent pixels are laid on black.
    /// <paramref name="channels"/> = 1 gives greyscale (ITU-R 601 luma, as PIL's "L"), 3 gives RGB.
    /// When the folder has sub-folders, each (not hidden, holding images at any depth) is a class, in ordinal
    /// order of their names as in torchvision's ImageFolder; otherwise the images in the folder itself are
    /// loaded unlabelled.
    /// </summary>
    public static ImageDataset FromFolder(string path, int resolution, int channels = 3, bool randomFlip = false)
    {
        if (channels != 1 && channels != 3)
            throw new DmdInputException($"images can have 1 (greyscale) or 3 (RGB) channels, not {channels}");
        if (resolution < 1)
            throw new DmdInputException($"image resolution must be positive, not {resolution}");
        if (!Directory.Exists(path))
            throw new DmdInputException($"image folder not found: {path} (check the path)");

        static bool IsImage(string f) => Extensions.Contains(Path.GetExtension(f).ToLowerInvariant());
        static string[] Images(string dir, SearchOption o) =>
            Directory.EnumerateFiles(dir, "*", o).Where(IsImage).Where(f => !Path.GetFileName(f).StartsWith('.'))
                     .Order(StringComparer.Ordinal).ToArray();

        var classDirs = Directory.EnumerateDirectories(path).Where(d => !Path.GetFileName(d).StartsWith('.'))
                                 .Order(StringComparer.Ordinal)
                                 .Select(d => (Name: Path.GetFileName(d), Files: Images(d, SearchOption.AllDirectories)))
                                 .Where(c => c.Files.Length > 0).ToList();
        var loose = Images(path, SearchOption.TopDirectoryOnly);
        if (classDirs.Count > 0 && loose.Length > 0)
            throw new DmdInputException($"{path} has both images ({Path.GetFileName(loose[0])}, ...) and class sub-folders ({classDirs[0].Name}, ...); " +
                                        "move every image into a class folder, or the sub-folders out, so that labels are unambiguous");
        var files = classDirs.Count > 0 ? classDirs.SelectMany(c => c.Files).ToArray() : loose;
        if (files.Length == 0)
            throw new DmdInputException($"no images ({string.Join(", ", Extensions)}) found in {path} or its sub-folders");

        int pixels = channels * resolution * resolution;
        var images = empty(new long[] { files.Length, channels, resolution, resolution }, dtype: ScalarType.Byte);
        try
        {
            Parallel.For(0, files.Length, i =>
            {
                var one = new byte[pixels];
                DecodeInto(files[i], resolution, channels, one);
                images.data<byte>().CopyFrom(one, 0, (long)i * pixels);
            });
        }
        catch (AggregateException e) when (e.InnerExceptions.FirstOrDefault(x => x is DmdInputException) is Exception first)
        {
            throw first;
        }
        if (classDirs.Count == 0) return new ImageDataset(images, randomFlip: randomFlip);
        var labels = classDirs.SelectMany((c, k) => Enumerable.Repeat((long)k, c.Files.Length)).ToArray();
        return new ImageDataset(images, tensor(labels), classDirs.Count, classDirs.Select(c => c.Name).ToArray(), randomFlip);
    }

    /// <summary>
    /// Decodes a whole image; a file that ends early (SkiaSharp would return its first rows over blank ones) or cannot
    /// be decoded is an error naming it.
    /// </summary>
    static SKBitmap DecodeWhole(string file)
    {
        string bad = $"{file}: cannot be decoded as an image (corrupt, empty, or not PNG/JPEG/BMP/WebP); remove or replace it";
        using var codec = SKCodec.Create(file) ?? throw new DmdInputException(bad);
        var info = new SKImageInfo(codec.Info.Width, codec.Info.Height, SKColorType.Rgba8888, SKAlphaType.Premul);
        if (info.Width < 1 || info.Height < 1) throw new DmdInputException(bad);
        var bmp = new SKBitmap(info);
        var result = codec.GetPixels(info, bmp.GetPixels());
        if (result == SKCodecResult.Success) return bmp;
        bmp.Dispose();
        throw new DmdInputException(result == SKCodecResult.IncompleteInput
            ? $"{file}: the image data ends early (a truncated or partly copied file); remove or replace it"
            : $"{bad} ({result})");
    }

    /// <summary>
    /// One image file as a float tensor (channels, resolution, resolution) in [-1, 1]: its short side resized to
    /// <paramref name="resolution"/>, the centre square cropped, as <see cref="FromFolder"/> loads each image.
    /// </summary>
    public static Tensor LoadFile(string file, int resolution, int channels = 3)
    {
        if (channels != 1 && channels != 3) throw new DmdInputException($"images can have 1 (greyscale) or 3 (RGB) channels, not {channels}");
        if (!File.Exists(file)) throw new DmdInputException($"image not found: {file}");
        var bytes = new byte[channels * resolution * resolution];
        DecodeInto(file, resolution, channels, bytes);
        using var u8 = tensor(bytes, new long[] { channels, resolution, resolution });
        return ToFloat(u8);
    }

    /// <summary>Decodes one file, resizes and crops it to a square, and writes it planar (C, H, W) into dst.</summary>
    static void DecodeInto(string file, int res, int channels, Span<byte> dst)
    {
        using var src = DecodeWhole(file);
        int side = Math.Min(src.Width, src.Height);
        var from = SKRect.Create((src.Width - side) / 2, (src.Height - side) / 2, side, side); // whole pixels
        using var dstBmp = new SKBitmap(new SKImageInfo(res, res, SKColorType.Rgba8888, SKAlphaType.Premul));
        using (var canvas = new SKCanvas(dstBmp))
        using (var img = SKImage.FromBitmap(src))
        {
            canvas.Clear(SKColors.Black);
            var sampling = side == res ? new SKSamplingOptions(SKFilterMode.Nearest)
                                       : new SKSamplingOptions(SKFilterMode.Linear, SKMipmapMode.Linear);
            canvas.DrawImage(img, from, SKRect.Create(0, 0, res, res), sampling);
        }
        var rgba = dstBmp.GetPixelSpan(); // opaque after the black background, so premultiplied = straight
        int plane = res * res;
        for (int p = 0; p < plane; p++)
        {
            byte r = rgba[4 * p], g = rgba[4 * p + 1], b = rgba[4 * p + 2];
            if (channels == 1) dst[p] = (byte)((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16);
            else { dst[p] = r; dst[plane + p] = g; dst[2 * plane + p] = b; }
        }
    }
}
