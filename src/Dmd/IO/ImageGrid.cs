using SkiaSharp;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.IO;

/// <summary>
/// PNG files from image tensors (N, C, H, W) in [-1, 1], greyscale (C = 1) or RGB (C = 3): a grid of samples
/// (one row per class for class-conditional models) or one file per image. Values map to pixels as in EDM's
/// generate.py, (x * 127.5 + 128) clamped to [0, 255] and truncated, the inverse of x = p / 127.5 - 1.
/// </summary>
public static class ImageGrid
{
    /// <summary>
    /// Writes the images row by row, <paramref name="columns"/> per row, each enlarged <paramref name="scale"/> times
    /// (nearest neighbour), with <paramref name="gap"/> white pixels between tiles. The PNG is
    /// (columns * W * scale + (columns - 1) * gap) wide and likewise high for the rows. Optional
    /// <paramref name="rowLabels"/> (e.g. class names) are written in a margin on the left.
    /// </summary>
    public static void Save(string path, Tensor images, int columns, int scale = 1, int gap = 1, IReadOnlyList<string>? rowLabels = null)
    {
        var px = ToPixels(images, out int n, out int c, out int h, out int w);
        if (columns < 1 || scale < 1 || gap < 0)
            throw new ArgumentException($"columns ({columns}) and scale ({scale}) must be positive and gap ({gap}) non-negative");
        int cols = Math.Min(columns, Math.Max(n, 1)), rows = (n + cols - 1) / cols;
        int th = h * scale, tw = w * scale;
        int width = cols * tw + (cols - 1) * gap, height = Math.Max(rows * th + (rows - 1) * gap, 1);
        int bpp = c == 1 ? 1 : 4;

        var buf = new byte[width * height * bpp];
        Array.Fill(buf, (byte)255);
        for (int i = 0; i < n; i++)
        {
            int ox = i % cols * (tw + gap), oy = i / cols * (th + gap);
            for (int y = 0; y < th; y++)
                for (int x = 0; x < tw; x++)
                {
                    int src = (i * h + y / scale) * w + x / scale, dst = ((oy + y) * width + ox + x) * bpp;
                    for (int k = 0; k < c; k++) buf[dst + k] = px[src * c + k];
                }
        }
        using var grid = ToBitmap(buf, width, height, bpp);
        if (rowLabels is null || rowLabels.Count == 0) { Write(grid, path); return; }

        // a left margin with one label per row, vertically centred on the row
        using var font = new SKFont(Font.Value, Math.Clamp(th * 0.35f, 10f, 16f));
        int margin = (int)Math.Ceiling(rowLabels.Max(l => font.MeasureText(l))) + 8;
        using var page = new SKBitmap(new SKImageInfo(margin + width, height, SKColorType.Rgba8888, SKAlphaType.Premul));
        using (var canvas = new SKCanvas(page))
        using (var ink = new SKPaint { Color = SKColors.Black, IsAntialias = true })
        {
            canvas.Clear(SKColors.White);
            canvas.DrawBitmap(grid, margin, 0);
            for (int r = 0; r < Math.Min(rows, rowLabels.Count); r++)
                canvas.DrawText(rowLabels[r], margin - 4, r * (th + gap) + th / 2f + font.Size * 0.35f, SKTextAlign.Right, font, ink);
        }
        Write(page, path);
    }

    /// <summary>Writes each image to its own PNG, <paramref name="folder"/>/{first + i:D6}.png (EDM's naming).</summary>
    public static void SaveEach(string folder, Tensor images, int first = 0)
    {
        var px = ToPixels(images, out int n, out int c, out int h, out int w);
        int bpp = c == 1 ? 1 : 4, size = h * w;
        Directory.CreateDirectory(folder);
        for (int i = 0; i < n; i++)
        {
            var buf = new byte[size * bpp];
            if (bpp == 4) Array.Fill(buf, (byte)255);
            for (int p = 0; p < size; p++)
                for (int k = 0; k < c; k++) buf[p * bpp + k] = px[(i * size + p) * c + k];
            using var bmp = ToBitmap(buf, w, h, bpp);
            Write(bmp, Path.Combine(folder, $"{first + i:D6}.png"));
        }
    }

    /// <summary>[-1, 1] floats (N, C, H, W) to bytes in (N, H, W, C) order.</summary>
    static byte[] ToPixels(Tensor images, out int n, out int c, out int h, out int w)
    {
        if (images.dim() != 4 || (images.shape[1] != 1 && images.shape[1] != 3))
            throw new ArgumentException($"images must be (N, 1 or 3, H, W), got [{string.Join(", ", images.shape)}]");
        (n, c, h, w) = ((int)images.shape[0], (int)images.shape[1], (int)images.shape[2], (int)images.shape[3]);
        using var scope = NewDisposeScope();
        var u8 = (images.detach().cpu().to(ScalarType.Float32).nan_to_num(0) * 127.5f + 128f)
                 .clamp(0, 255).to(ScalarType.Byte).permute(0, 2, 3, 1).contiguous();
        return u8.data<byte>().ToArray();
    }

    static SKBitmap ToBitmap(byte[] buf, int width, int height, int bpp)
    {
        var info = new SKImageInfo(width, height, bpp == 1 ? SKColorType.Gray8 : SKColorType.Rgba8888, SKAlphaType.Opaque);
        var bmp = new SKBitmap(info);
        for (int y = 0; y < height; y++) // row by row: the bitmap's rows may be padded
            Marshal.Copy(buf, y * width * bpp, bmp.GetPixels() + y * bmp.RowBytes, width * bpp);
        return bmp;
    }

    static void Write(SKBitmap bmp, string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        using var img = SKImage.FromBitmap(bmp);
        using var data = img.Encode(SKEncodedImageFormat.Png, 100);
        using var fs = File.Create(path);
        data.SaveTo(fs);
    }

    static Lazy<SKTypeface> Font => Plots.Font;
}
