using Dmd.IO;
using System.Globalization;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Data;

/// <summary>Known mixture components of a built-in distribution, for mode-coverage metrics.</summary>
public sealed record ModeInfo(double[][] Centers, double Std);

/// <summary>A set of points (N, D) with optional class labels.</summary>
public sealed class PointSet : IDataSource
{
    /// <summary>The points, float32 (N, D).</summary>
    public Tensor Points { get; }
    /// <summary>Class index per point (N), or null.</summary>
    public Tensor? ClassIndex { get; }
    /// <summary>Number of classes (0 when unlabelled).</summary>
    public int NumClasses { get; }
    /// <summary>Mixture components when the distribution is a known Gaussian mixture, else null.</summary>
    public ModeInfo? Modes { get; }

    /// <summary>
    /// Wraps points (N, D), converted to float32, with optional class indices (N) in [0, <paramref name="numClasses"/>)
    /// (taken as 0 classes without labels) and the known mixture components <paramref name="modes"/>.
    /// </summary>
    public PointSet(Tensor points, Tensor? classIndex = null, int numClasses = 0, ModeInfo? modes = null)
    {
        if (points.dim() != 2) throw new ArgumentException("points must be (N, D)");
        Points = points.to(ScalarType.Float32);
        ClassIndex = classIndex;
        NumClasses = classIndex is null ? 0 : numClasses;
        Modes = modes;
    }

    /// <summary>Dimension D of a point.</summary>
    public int Dim => (int)Points.shape[1];
    /// <summary>Shape of one sample: [D].</summary>
    public int[] Shape => new[] { Dim };
    /// <summary>Number of points N.</summary>
    public long Count => Points.shape[0];

    /// <summary>Overall standard deviation of the coordinates: the sigma_data of the preconditioning.</summary>
    public double Std => Points.std().item<float>();

    /// <summary>
    /// A random batch (with replacement, indices drawn from <paramref name="g"/>): points float32 (n, D) and one-hot
    /// labels (n, classes), or null when unlabelled.
    /// </summary>
    public (Tensor X, Tensor? Labels) Batch(int n, Generator? g) => Take(Rng.Integers(0, Count, n, g));

    /// <inheritdoc/>
    public (Tensor X, Tensor? Labels) BatchOfClasses(Tensor classIndex, Generator? g)
    {
        if (ClassIndex is null) throw new DmdInputException("a class-matched batch needs class-labelled points, and these have no labels");
        classRuns ??= new ClassRuns(ClassIndex, NumClasses);
        return Take(classRuns.Draw(classIndex, g));
    }

    ClassRuns? classRuns;

    (Tensor X, Tensor? Labels) Take(Tensor idx) =>
        (Points.index_select(0, idx), ClassIndex is null ? null : Rng.OneHot(ClassIndex.index_select(0, idx), NumClasses));

    /// <summary>Drops the labels (for unconditional training).</summary>
    public PointSet WithoutLabels() => new(Points, null, 0, Modes);

    /// <summary>
    /// Reads points from a CSV file: one point per row, any number of numeric columns. A first row that is
    /// not numeric is a header; a column named "label" (integers 0..C-1) gives class labels.
    /// </summary>
    public static PointSet FromCsv(string path, int? expectedDim = null)
    {
        if (!File.Exists(path)) throw new DmdInputException($"CSV file not found: {path}");
        var lines = File.ReadAllLines(path).Select((l, i) => (Text: l.Trim(), Line: i + 1)).Where(t => t.Text.Length > 0 && !t.Text.StartsWith('#')).ToList();
        if (lines.Count == 0) throw new DmdInputException($"{path}: no data rows");
        string[] Split(string s) => s.Split(new[] { ',', ';', '\t' }).Select(c => c.Trim()).ToArray();
        int labelCol = -1;
        var first = Split(lines[0].Text);
        if (!first.All(c => double.TryParse(c, NumberStyles.Float, CultureInfo.InvariantCulture, out _)))
        {
            labelCol = Array.FindIndex(first, c => c.Equals("label", StringComparison.OrdinalIgnoreCase));
            lines.RemoveAt(0);
            if (lines.Count == 0) throw new DmdInputException($"{path}: a header but no data rows");
        }
        int cols = first.Length;
        int dim = cols - (labelCol >= 0 ? 1 : 0);
        if (dim < 1) throw new DmdInputException($"{path}: no coordinate columns");
        if (expectedDim is int d && d != dim)
            throw new DmdInputException($"{path}: points have {dim} coordinates but the model expects {d}; use a CSV with {d} numeric columns (plus an optional 'label' column)");
        var data = new float[lines.Count * dim];
        var labels = labelCol >= 0 ? new long[lines.Count] : null;
        for (int r = 0; r < lines.Count; r++)
        {
            var c = Split(lines[r].Text);
            if (c.Length != cols)
                throw new DmdInputException($"{path}, line {lines[r].Line}: {c.Length} columns where the file has {cols}; every row needs the same number of values");
            int k = 0;
            for (int j = 0; j < cols; j++)
            {
                if (!double.TryParse(c[j], NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || double.IsNaN(v) || double.IsInfinity(v))
                    throw new DmdInputException($"{path}, line {lines[r].Line}, column {j + 1}: '{c[j]}' is not a finite number");
                if (j == labelCol)
                {
                    if (v < 0 || v != Math.Floor(v)) throw new DmdInputException($"{path}, line {lines[r].Line}: label '{c[j]}' must be a non-negative integer");
                    labels![r] = (long)v;
                }
                else data[r * dim + k++] = (float)v;
            }
        }
        var pts = torch.tensor(data, new long[] { lines.Count, dim });
        if (lines.Count < 2 || (pts - pts[0]).abs().max().item<float>() == 0)
            throw new DmdInputException($"{path}: the points are all identical (zero spread), so there is no distribution to learn; give at least two different points");
        if (labels is null) return new PointSet(pts);
        int classes = (int)labels.Max() + 1;
        return new PointSet(pts, torch.tensor(labels), classes);
    }

    /// <summary>Writes points (and labels, if any) as CSV.</summary>
    public static void ToCsv(string path, Tensor points, Tensor? classIndex = null)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        var p = points.to(ScalarType.Float32).cpu();
        int n = (int)p.shape[0], d = (int)p.shape[1];
        var v = p.data<float>().ToArray();
        var lab = classIndex?.to(ScalarType.Int64).cpu().data<long>().ToArray();
        using var w = new StreamWriter(path);
        w.WriteLine(string.Join(",", Enumerable.Range(0, d).Select(i => $"x{i}")) + (lab is null ? "" : ",label"));
        for (int i = 0; i < n; i++)
            w.WriteLine(string.Join(",", Enumerable.Range(0, d).Select(j => v[i * d + j].ToString("R", CultureInfo.InvariantCulture))) + (lab is null ? "" : "," + lab[i]));
    }
}
