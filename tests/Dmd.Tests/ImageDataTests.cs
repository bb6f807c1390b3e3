using Dmd.Data;
using Dmd.IO;
using SkiaSharp;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>Image data: IDX files, Fashion-MNIST, in-memory image sets, image folders, PNG grids.</summary>
public class ImageDataTests
{
    readonly ITestOutputHelper log;
    public ImageDataTests(ITestOutputHelper log) => this.log = log;

    static Tensor RandomBytes(long[] shape, ulong seed)
    {
        using var g = new Generator(seed);
        return randint(0, 256, shape, dtype: ScalarType.Int64, generator: g).to(ScalarType.Byte);
    }

    // ---- IDX ----

    [Fact]
    public void IdxRoundTripsRawAndGzipFilesOfEveryWidth()
    {
        var dir = TestUtil.TempDir();
        var images = RandomBytes(new long[] { 3, 4, 5 }, 1);
        foreach (var name in new[] { "a-idx3-ubyte", "a-idx3-ubyte.gz" })
        {
            var path = Path.Combine(dir, name);
            Idx.Write(path, images);
            Assert.True(TestUtil.Same(images, Idx.Read(path)), name);
        }
        var head = File.ReadAllBytes(Path.Combine(dir, "a-idx3-ubyte"))[..8];
        Assert.Equal(new byte[] { 0, 0, 0x08, 3, 0, 0, 0, 3 }, head);
        Assert.Equal(new byte[] { 0x1f, 0x8b }, File.ReadAllBytes(Path.Combine(dir, "a-idx3-ubyte.gz"))[..2]);

        // compression is recognised by content, not by name
        File.Copy(Path.Combine(dir, "a-idx3-ubyte.gz"), Path.Combine(dir, "renamed"));
        Assert.True(TestUtil.Same(images, Idx.Read(Path.Combine(dir, "renamed"))));

        // multi-byte types are big-endian on disk and come back unchanged
        foreach (var t in new[] { tensor(new short[] { 1, -2, 300 }), tensor(new[] { 1, -70000, int.MaxValue }),
                                  tensor(new[] { 1.5f, -2.25f, 1e30f }), tensor(new[] { Math.PI, -1e-300 }) })
        {
            var path = Path.Combine(dir, $"t{t.dtype}.gz");
            Idx.Write(path, t);
            Assert.True(TestUtil.Same(t, Idx.Read(path)), t.dtype.ToString());
        }
        Assert.Equal(new byte[] { 0, 0, 0x0B, 1, 0, 0, 0, 3, 0, 1 }, File.ReadAllBytes(WriteRaw(dir, tensor(new short[] { 1, -2, 300 })))[..10]);
    }

    static string WriteRaw(string dir, Tensor t)
    {
        var p = Path.Combine(dir, Guid.NewGuid().ToString("N"));
        Idx.Write(p, t);
        return p;
    }

    [Fact]
    public void IdxRejectsTruncatedFilesNamingTheFile()
    {
        var dir = TestUtil.TempDir();
        var raw = Path.Combine(dir, "cut-idx3-ubyte");
        Idx.Write(raw, RandomBytes(new long[] { 10, 28, 28 }, 2));
        var bytes = File.ReadAllBytes(raw);
        File.WriteAllBytes(raw, bytes[..(bytes.Length - 100)]);
        var e = Assert.Throws<DmdInputException>(() => Idx.Read(raw));
        Assert.Contains(raw, e.Message);
        Assert.Contains("truncated", e.Message);
        Assert.Contains("[10, 28, 28]", e.Message);

        File.WriteAllBytes(raw, bytes[..10]); // inside the header
        e = Assert.Throws<DmdInputException>(() => Idx.Read(raw));
        Assert.Contains(raw, e.Message);
        Assert.Contains("truncated", e.Message);

        var gz = Path.Combine(dir, "cut-idx3-ubyte.gz");
        Idx.Write(gz, RandomBytes(new long[] { 10, 28, 28 }, 2));
        var z = File.ReadAllBytes(gz);
        File.WriteAllBytes(gz, z[..(z.Length / 2)]);
        e = Assert.Throws<DmdInputException>(() => Idx.Read(gz));
        Assert.Contains(gz, e.Message);
        Assert.True(e.Message.Contains("truncated") || e.Message.Contains("damaged"), e.Message);
    }

    [Fact]
    public void IdxRejectsWrongMagicAndUnsupportedTypesNamingTheFile()
    {
        var dir = TestUtil.TempDir();
        var png = Path.Combine(dir, "not-idx.png");
        File.WriteAllBytes(png, new byte[] { 0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0 });
        var e = Assert.Throws<DmdInputException>(() => Idx.Read(png));
        Assert.Contains(png, e.Message);
        Assert.Contains("wrong magic number 89 50 4e 47", e.Message);

        var odd = Path.Combine(dir, "odd-type");
        File.WriteAllBytes(odd, new byte[] { 0, 0, 0x07, 1, 0, 0, 0, 1, 42 });
        e = Assert.Throws<DmdInputException>(() => Idx.Read(odd));
        Assert.Contains(odd, e.Message);
        Assert.Contains("unsupported value type 0x07", e.Message);

        e = Assert.Throws<DmdInputException>(() => Idx.Read(Path.Combine(dir, "missing")));
        Assert.Contains("not found", e.Message);
    }

    [Fact]
    public void IdxImagesAndLabelsMustHaveTheSameCount()
    {
        var dir = TestUtil.TempDir();
        string images = Path.Combine(dir, "images.gz"), labels = Path.Combine(dir, "labels.gz");
        Idx.Write(images, RandomBytes(new long[] { 5, 3, 3 }, 3));
        Idx.Write(labels, tensor(new byte[] { 1, 2, 3, 4 }));
        var e = Assert.Throws<DmdInputException>(() => Idx.ReadImagesAndLabels(images, labels));
        Assert.Contains("5 images", e.Message);
        Assert.Contains("4 labels", e.Message);

        e = Assert.Throws<DmdInputException>(() => Idx.ReadImagesAndLabels(labels, images)); // swapped
        Assert.Contains(labels, e.Message);
        Assert.Contains("(N, H, W)", e.Message);
    }

    // ---- Fashion-MNIST ----

    [FashionMnistFact]
    public void FashionMnistFromTheDebianPackageHas60000TrainAnd10000TestImagesIn10Classes()
    {
        var train = FashionMnist.Load();
        Assert.Equal(60000, train.Count);
        Assert.Equal(new[] { 1, 28, 28 }, train.Shape);
        Assert.Equal(10, train.NumClasses);
        Assert.Equal("Ankle boot", train.ClassNames![9]);
        Assert.Equal(Enumerable.Repeat(6000L, 10), train.ClassIndex!.bincount(null, 10).data<long>().ToArray()); // balanced

        var test = FashionMnist.Load(test: true, padTo32: true);
        Assert.Equal(10000, test.Count);
        Assert.Equal(new[] { 1, 32, 32 }, test.Shape);
        Assert.Equal(10, test.NumClasses);
        var border = test.Images.clone();
        border[.., .., 2..30, 2..30] = tensor((byte)0);
        Assert.Equal(0, border.max().item<byte>()); // the padding is background
        Assert.True(TestUtil.Same(FashionMnist.Load(test: true).Images, test.Images[.., .., 2..30, 2..30].contiguous()));
    }

    [Fact]
    public void FashionMnistLoadsFromAUserFolderAndOtherwiseSaysHowToGetIt()
    {
        var dir = TestUtil.TempDir();
        var e = Assert.Throws<DmdInputException>(() => FashionMnist.Load(folder: dir));
        Assert.Contains(dir, e.Message);
        Assert.Contains("apt-get install dataset-fashion-mnist", e.Message);
        Assert.Contains("--data fashion-mnist:FOLDER", e.Message);

        // raw (not gzipped) files with the original names
        var images = RandomBytes(new long[] { 7, 28, 28 }, 4);
        var labels = tensor(new byte[] { 0, 1, 2, 3, 4, 5, 9 });
        Idx.Write(Path.Combine(dir, "t10k-images-idx3-ubyte"), images);
        Idx.Write(Path.Combine(dir, "t10k-labels-idx1-ubyte"), labels);
        var ds = FashionMnist.Load(test: true, folder: dir);
        Assert.True(TestUtil.Same(images.unsqueeze(1), ds.Images));
        Assert.True(TestUtil.Same(labels.to(ScalarType.Int64), ds.ClassIndex!));
        Assert.False(FashionMnist.IsAvailable(dir)); // no training split there
    }

    // ---- ImageDataset ----

    [Fact]
    public void BatchesAreInUnitRangeWithOneHotLabelsOfTheirOwnImages()
    {
        // image i is filled with the value 20 * label + (i % 3), so each image says which class it is
        int n = 30;
        var labels = arange(n, dtype: ScalarType.Int64) * 7 % 10;
        var fill = (labels * 20 + arange(n) % 3).to(ScalarType.Byte).view(n, 1, 1, 1);
        var ds = new ImageDataset(fill.expand(n, 3, 5, 4).contiguous(), labels, 10);

        using var g = new Generator(5);
        var (x, y) = ds.Batch(64, g);
        Assert.Equal(new long[] { 64, 3, 5, 4 }, x.shape);
        Assert.Equal(ScalarType.Float32, x.dtype);
        Assert.True(x.min().item<float>() >= -1f && x.max().item<float>() <= 1f);
        Assert.Equal(new long[] { 64, 10 }, y!.shape);
        Assert.True(TestUtil.Same(ones(64), y.sum(1)));
        Assert.True(TestUtil.Same(y, y.clamp(0, 1).round()));
        var pixel = ((x[.., 0, 0, 0] + 1) * 127.5f).round().to(ScalarType.Int64);
        Assert.True(TestUtil.Same(div(pixel, 20, RoundingMode.floor).to(ScalarType.Int64), y.argmax(1)));
        Assert.True(TestUtil.Same(x, x.amax(new long[] { 1, 2, 3 }).view(64, 1, 1, 1).expand_as(x))); // whole images, not mixtures

        // the end points of the byte range map to the end points of [-1, 1]
        var ends = ImageDataset.ToFloat(tensor(new byte[] { 0, 255 }));
        Assert.Equal(new[] { -1f, 1f }, ends.data<float>().ToArray());

        // the same generator state gives the same batch; no labels gives null
        using var g1 = new Generator(9); using var g2 = new Generator(9);
        Assert.True(TestUtil.Same(ds.Batch(8, g1).X, ds.WithoutLabels().Batch(8, g2).X));
        Assert.Null(ds.WithoutLabels().Batch(8, g2).Labels);
        Assert.Equal(0, ds.WithoutLabels().NumClasses);
    }

    [Fact]
    public void RandomFlipsMirrorImagesLeftRight()
    {
        var img = arange(2 * 3 * 4, dtype: ScalarType.Int64).to(ScalarType.Byte).view(1, 2, 3, 4); // asymmetric
        var ds = new ImageDataset(img, randomFlip: true);
        using var g = new Generator(3);
        var (x, _) = ds.Batch(64, g);
        var original = ImageDataset.ToFloat(img);
        var mirrored = original.flip(3);
        int flipped = 0;
        for (int i = 0; i < 64; i++)
        {
            bool same = TestUtil.Same(x[i..(i + 1)], original), mirror = TestUtil.Same(x[i..(i + 1)], mirrored);
            Assert.True(same ^ mirror, $"sample {i} is neither the image nor its mirror");
            if (mirror) flipped++;
        }
        Assert.InRange(flipped, 16, 48);
        Assert.Equal(original[0, 1, 2, 0].item<float>(), mirrored[0, 1, 2, 3].item<float>());

        using var g2 = new Generator(3);
        var (plain, _) = ds.WithRandomFlip(false).Batch(64, g2);
        Assert.True(TestUtil.Same(plain, original.expand(64, 2, 3, 4).contiguous()));
    }

    // ---- image folders ----

    static void WritePng(string path, int w, int h, Func<int, int, SKColor> color, SKEncodedImageFormat format = SKEncodedImageFormat.Png)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        using var bmp = new SKBitmap(new SKImageInfo(w, h, SKColorType.Rgba8888, SKAlphaType.Premul));
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) bmp.SetPixel(x, y, color(x, y));
        using var img = SKImage.FromBitmap(bmp);
        using var data = img.Encode(format, 100);
        File.WriteAllBytes(path, data.ToArray());
    }

    [Fact]
    public void ImageFolderTakesLabelsFromSubfoldersInNameOrderAndCropsTheCentre()
    {
        var dir = TestUtil.TempDir();
        var red = new SKColor(200, 10, 10); var green = new SKColor(20, 180, 40); var blue = new SKColor(0, 0, 255);
        // class "b_green": 12x4 images whose centre 4x4 square is green and whose sides are blue
        WritePng(Path.Combine(dir, "b_green", "1.png"), 12, 4, (x, _) => x is >= 4 and < 8 ? green : blue);
        WritePng(Path.Combine(dir, "b_green", "deeper", "2.png"), 4, 12, (_, y) => y is >= 4 and < 8 ? green : blue);
        // class "a_red": a larger square image (downscaled) and a JPEG
        WritePng(Path.Combine(dir, "a_red", "big.png"), 16, 16, (_, _) => red);
        WritePng(Path.Combine(dir, "a_red", "photo.jpg"), 8, 8, (_, _) => red, SKEncodedImageFormat.Jpeg);
        File.WriteAllText(Path.Combine(dir, "a_red", "notes.txt"), "not an image");
        Directory.CreateDirectory(Path.Combine(dir, "c_empty"));

        var ds = ImageDataset.FromFolder(dir, resolution: 4, channels: 3);
        Assert.Equal(4, ds.Count);
        Assert.Equal(new[] { 3, 4, 4 }, ds.Shape);
        Assert.Equal(new[] { "a_red", "b_green" }, ds.ClassNames);
        Assert.Equal(2, ds.NumClasses);
        Assert.Equal(new long[] { 0, 0, 1, 1 }, ds.ClassIndex!.data<long>().ToArray());
        for (int i = 0; i < 4; i++)
        {
            var want = i < 2 ? red : green;
            var px = ds.Images[i].to(ScalarType.Int32);
            int tol = i == 1 ? 6 : 0; // JPEG is lossy
            Assert.True((px[0] - want.Red).abs().max().item<int>() <= tol, $"image {i} red");
            Assert.True((px[1] - want.Green).abs().max().item<int>() <= tol, $"image {i} green");
            Assert.True((px[2] - want.Blue).abs().max().item<int>() <= tol, $"image {i} blue");
        }

        var grey = ImageDataset.FromFolder(dir, resolution: 2, channels: 1);
        Assert.Equal(new[] { 1, 2, 2 }, grey.Shape);
        int luma = (int)Math.Round(0.299 * green.Red + 0.587 * green.Green + 0.114 * green.Blue);
        Assert.InRange(grey.Images[3, 0, 0, 0].item<byte>(), luma - 1, luma + 1);
    }

    [Fact]
    public void ImageFolderWithoutSubfoldersIsUnlabelled()
    {
        var dir = TestUtil.TempDir();
        for (int i = 0; i < 3; i++) WritePng(Path.Combine(dir, $"{i}.png"), 5, 7, (x, y) => new SKColor((byte)(40 * i), (byte)x, (byte)y));
        var ds = ImageDataset.FromFolder(dir, resolution: 5, channels: 3);
        Assert.Equal(3, ds.Count);
        Assert.Equal(new[] { 3, 5, 5 }, ds.Shape);
        Assert.Equal(0, ds.NumClasses);
        Assert.Null(ds.ClassIndex);
        Assert.Null(ds.Batch(4, null).Labels);
        Assert.Equal(80, ds.Images[2, 0, 0, 0].item<byte>()); // files in name order
        Assert.Equal(3, ds.Images[2, 1, 0, 3].item<byte>());  // x kept, no scaling
        Assert.Equal(1 + 2, ds.Images[2, 2, 2, 0].item<byte>()); // centre crop drops one row at the top
    }

    [Fact]
    public void ImageFolderErrorsNameTheFolderOrTheBadFile()
    {
        var dir = TestUtil.TempDir();
        var e = Assert.Throws<DmdInputException>(() => ImageDataset.FromFolder(dir, 8, 1));
        Assert.Contains("no images", e.Message);
        Assert.Contains(dir, e.Message);

        e = Assert.Throws<DmdInputException>(() => ImageDataset.FromFolder(Path.Combine(dir, "nope"), 8, 1));
        Assert.Contains("not found", e.Message);

        WritePng(Path.Combine(dir, "good.png"), 8, 8, (_, _) => SKColors.White);
        File.WriteAllBytes(Path.Combine(dir, "bad.png"), new byte[] { 0x89, 0x50, 0x4e, 0x47, 1, 2, 3, 4, 5 });
        e = Assert.Throws<DmdInputException>(() => ImageDataset.FromFolder(dir, 8, 1));
        Assert.Contains(Path.Combine(dir, "bad.png"), e.Message);
        Assert.Contains("cannot be decoded", e.Message);

        e = Assert.Throws<DmdInputException>(() => ImageDataset.FromFolder(dir, 8, 2));
        Assert.Contains("1 (greyscale) or 3 (RGB)", e.Message);
    }

    // ---- PNG output ----

    [Fact]
    public void GridPngHasTheExpectedSizeAndPixelValues()
    {
        var dir = TestUtil.TempDir();
        // five 2x3 greyscale images, each a constant; 3 columns, scale 2, gap 1 -> 2 rows
        var values = new[] { -1f, 0f, 1f, 5f, -3f };
        var imgs = tensor(values).view(5, 1, 1, 1).expand(5, 1, 2, 3).contiguous();
        var path = Path.Combine(dir, "grid.png");
        ImageGrid.Save(path, imgs, columns: 3, scale: 2, gap: 1);
        using var bmp = SKBitmap.Decode(path);
        Assert.Equal(3 * 3 * 2 + 2, bmp.Width);
        Assert.Equal(2 * 2 * 2 + 1, bmp.Height);
        var expected = new byte[] { 0, 128, 255, 255, 0 };
        for (int i = 0; i < 5; i++)
        {
            int ox = i % 3 * 7, oy = i / 3 * 5;
            foreach (var (dx, dy) in new[] { (0, 0), (5, 3), (2, 1) })
            {
                var c = bmp.GetPixel(ox + dx, oy + dy);
                Assert.Equal((expected[i], expected[i], expected[i]), (c.Red, c.Green, c.Blue));
            }
        }
        Assert.Equal(SKColors.White, bmp.GetPixel(6, 0));   // gap between columns
        Assert.Equal(SKColors.White, bmp.GetPixel(0, 4));   // gap between rows
        Assert.Equal(SKColors.White, bmp.GetPixel(19, 8));  // the empty sixth cell

        // RGB, one row per class with labels in a left margin
        var rgb = tensor(new[] { 1f, -1f, -1f, -1f, 0f, 1f }).view(2, 3, 1, 1).expand(2, 3, 4, 4).contiguous();
        ImageGrid.Save(path, rgb, columns: 1, gap: 2);
        using (var b = SKBitmap.Decode(path))
        {
            Assert.Equal((4, 10), (b.Width, b.Height));
            Assert.Equal(new SKColor(255, 0, 0), b.GetPixel(3, 3));
            Assert.Equal(new SKColor(0, 128, 255), b.GetPixel(0, 6));
        }
        ImageGrid.Save(path, rgb, columns: 1, gap: 2, rowLabels: new[] { "Coat", "Ankle boot" });
        using (var b = SKBitmap.Decode(path))
        {
            Assert.Equal(10, b.Height);
            Assert.True(b.Width > 30);
            Assert.Equal(new SKColor(0, 128, 255), b.GetPixel(b.Width - 1, 9));
        }
    }

    [Fact]
    public void SingleImagePngsRoundTripTheBytesExactly()
    {
        var dir = TestUtil.TempDir();
        foreach (int c in new[] { 1, 3 })
        {
            var bytes = RandomBytes(new long[] { 3, c, 6, 6 }, (ulong)c);
            var folder = Path.Combine(dir, $"c{c}");
            ImageGrid.SaveEach(folder, ImageDataset.ToFloat(bytes), first: 10);
            Assert.Equal(new[] { "000010.png", "000011.png", "000012.png" }, Directory.GetFiles(folder).Select(f => Path.GetFileName(f)).Order());
            var back = ImageDataset.FromFolder(folder, resolution: 6, channels: c);
            Assert.True(TestUtil.Same(bytes, back.Images), $"{c} channels");
        }
    }
}
