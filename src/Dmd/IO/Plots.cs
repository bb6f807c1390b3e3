using SkiaSharp;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.IO;

/// <summary>PNG figures drawn with SkiaSharp: scatter panels for point sets, loss curves for runs.</summary>
internal static class Plots
{
    /// <summary>The embedded DejaVu Sans, shared by every figure that writes text (plots, image grids).</summary>
    internal static readonly Lazy<SKTypeface> Font = new(() =>
    {
        using var s = typeof(Plots).Assembly.GetManifestResourceStream("Dmd.Assets.DejaVuSans.ttf")!;
        return SKTypeface.FromStream(s);
    });

    static readonly SKColor[] Palette =
    {
        new(31, 119, 180), new(255, 127, 14), new(44, 160, 44), new(214, 39, 40),
        new(148, 103, 189), new(140, 86, 75), new(227, 119, 194), new(127, 127, 127),
    };

    static SKFont MakeFont(float size) => new(Font.Value, size);

    static void Text(SKCanvas c, string s, float x, float y, float size, SKColor color, SKTextAlign align = SKTextAlign.Left)
    {
        using var f = MakeFont(size);
        using var p = new SKPaint { Color = color, IsAntialias = true };
        c.DrawText(s, x, y, align, f, p);
    }

    static void Save(SKSurface surface, string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        using var img = surface.Snapshot();
        using var data = img.Encode(SKEncodedImageFormat.Png, 100);
        using var fs = File.Create(path);
        data.SaveTo(fs);
    }

    /// <summary>
    /// Side-by-side 2-D scatter plots on common axes (set by <paramref name="reference"/>, the data), one panel per
    /// (title, points). Only the first two coordinates are drawn.
    /// </summary>
    public static void ScatterPanels(string path, IReadOnlyList<(string Title, Tensor Points)> panels, Tensor reference, int panelSize = 300, int maxPoints = 3000)
    {
        var r = reference.to(ScalarType.Float32).cpu();
        float lo = Math.Min(r[.., 0].min().item<float>(), r[.., 1].min().item<float>());
        float hi = Math.Max(r[.., 0].max().item<float>(), r[.., 1].max().item<float>());
        float pad = 0.15f * (hi - lo); lo -= pad; hi += pad;
        int cols = Math.Min(panels.Count, 4), rows = (panels.Count + cols - 1) / cols;
        const int title = 30;
        using var surface = SKSurface.Create(new SKImageInfo(cols * panelSize, rows * (panelSize + title)));
        var c = surface.Canvas;
        c.Clear(SKColors.White);
        using var frame = new SKPaint { Color = new SKColor(200, 200, 200), Style = SKPaintStyle.Stroke, StrokeWidth = 1 };
        for (int i = 0; i < panels.Count; i++)
        {
            float ox = i % cols * panelSize, oy = i / cols * (panelSize + title) + title;
            Text(c, panels[i].Title, ox + panelSize / 2f, oy - 9, 15, SKColors.Black, SKTextAlign.Center);
            c.DrawRect(ox + 4, oy, panelSize - 8, panelSize - 8, frame);
            var p = panels[i].Points.to(ScalarType.Float32).cpu();
            int n = (int)Math.Min(p.shape[0], maxPoints);
            var v = p.narrow(0, 0, n).contiguous().data<float>().ToArray();
            int d = (int)p.shape[1];
            using var dot = new SKPaint { Color = Palette[i % Palette.Length].WithAlpha(110), IsAntialias = true };
            float scale = (panelSize - 16) / (hi - lo);
            for (int k = 0; k < n; k++)
            {
                float x = v[k * d], y = d > 1 ? v[k * d + 1] : 0;
                if (float.IsNaN(x) || float.IsNaN(y)) continue;
                float px = ox + 8 + (x - lo) * scale, py = oy + panelSize - 12 - (y - lo) * scale;
                if (px < ox + 4 || px > ox + panelSize - 4 || py < oy || py > oy + panelSize - 8) continue;
                c.DrawCircle(px, py, 1.6f, dot);
            }
        }
        Save(surface, path);
    }

    /// <summary>Loss curves (log scale) of one or more runs from their losses.csv files, one panel per run.</summary>
    public static void LossCurves(string path, IReadOnlyList<(string Run, string CsvPath)> runs, int width = 420, int height = 280)
    {
        var logs = runs.Where(r => File.Exists(r.CsvPath)).Select(r => (r.Run, Series: CsvLog.Read(r.CsvPath)
                    .Where(kv => kv.Key.StartsWith("loss")).ToList())).Where(r => r.Series.Count > 0).ToList();
        if (logs.Count == 0) return;
        int cols = Math.Min(logs.Count, 4), rows = (logs.Count + cols - 1) / cols;
        using var surface = SKSurface.Create(new SKImageInfo(cols * width, rows * height));
        var c = surface.Canvas;
        c.Clear(SKColors.White);
        using var axis = new SKPaint { Color = SKColors.Gray, Style = SKPaintStyle.Stroke, StrokeWidth = 1 };
        for (int i = 0; i < logs.Count; i++)
        {
            float ox = i % cols * width, oy = i / cols * height;
            float l = ox + 55, t = oy + 30, w = width - 75, h = height - 70;
            Text(c, logs[i].Run, ox + width / 2f, oy + 20, 15, SKColors.Black, SKTextAlign.Center);
            c.DrawRect(l, t, w, h, axis);
            var all = logs[i].Series.SelectMany(s => s.Value).Where(p => p.Value > 0 && double.IsFinite(p.Value)).ToList();
            if (all.Count == 0) continue;
            double ymin = Math.Log10(all.Min(p => p.Value)), ymax = Math.Log10(all.Max(p => p.Value));
            if (ymax - ymin < 1e-6) { ymin -= 0.5; ymax += 0.5; }
            double xmax = Math.Max(1, all.Max(p => p.Step));
            Text(c, $"1e{ymax:F1}", l - 4, t + 10, 11, SKColors.Gray, SKTextAlign.Right);
            Text(c, $"1e{ymin:F1}", l - 4, t + h, 11, SKColors.Gray, SKTextAlign.Right);
            Text(c, $"step {xmax:F0}", l + w, t + h + 16, 11, SKColors.Gray, SKTextAlign.Right);
            int si = 0;
            float legendX = l;
            foreach (var (name, pts) in logs[i].Series)
            {
                using var line = new SKPaint { Color = Palette[si % Palette.Length], Style = SKPaintStyle.Stroke, StrokeWidth = 1.5f, IsAntialias = true };
                using var pathObj = new SKPath();
                bool first = true;
                foreach (var (step, val) in pts)
                {
                    if (val <= 0 || !double.IsFinite(val)) continue;
                    float px = l + (float)(step / xmax * w), py = t + h - (float)((Math.Log10(val) - ymin) / (ymax - ymin) * h);
                    if (first) pathObj.MoveTo(px, py); else pathObj.LineTo(px, py);
                    first = false;
                }
                c.DrawPath(pathObj, line);
                Text(c, name, legendX, t + h + 32, 12, Palette[si % Palette.Length]);
                using (var f = MakeFont(12)) legendX += f.MeasureText(name) + 14;
                si++;
            }
        }
        Save(surface, path);
    }
}
