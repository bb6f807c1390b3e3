using System.Globalization;

namespace Dmd.IO;

/// <summary>Appends one CSV row per logged step: the losses of a run, for plots and for people.</summary>
internal sealed class CsvLog
{
    private readonly string path;
    private string[]? columns;

    /// <summary>
    /// A log at <paramref name="path"/> (its folder created): with <paramref name="append"/> an existing file keeps its rows
    /// and header; otherwise the file starts empty.
    /// </summary>
    public CsvLog(string path, bool append)
    {
        this.path = path;
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        if (append && File.Exists(path))
        {
            var header = File.ReadLines(path).FirstOrDefault();
            if (!string.IsNullOrEmpty(header)) columns = header.Split(',').Skip(1).ToArray();
        }
        else File.WriteAllText(path, "");
    }

    /// <summary>
    /// Appends the row "step,values" (G6, invariant culture). The first row written sets the header from the keys of
    /// <paramref name="values"/>; later a column without a value is left empty, and a key not in the header (a loss a
    /// resumed run adds, e.g. the GAN's) widens it: the file is rewritten with the new columns, empty in the older rows.
    /// </summary>
    public void Write(int step, IReadOnlyDictionary<string, double> values)
    {
        if (columns is null)
        {
            columns = values.Keys.ToArray();
            File.AppendAllText(path, "step," + string.Join(",", columns) + "\n");
        }
        var added = values.Keys.Where(k => !columns.Contains(k)).ToArray();
        if (added.Length > 0)
        {
            columns = columns.Concat(added).ToArray();
            var pad = new string(',', added.Length);
            var rows = File.ReadLines(path).Skip(1).Select(l => l + pad);
            File.WriteAllLines(path + ".tmp", new[] { "step," + string.Join(",", columns) }.Concat(rows));
            File.Move(path + ".tmp", path, overwrite: true);
        }
        File.AppendAllText(path, step + "," + string.Join(",", columns.Select(c => values.TryGetValue(c, out var v) ? v.ToString("G6", CultureInfo.InvariantCulture) : "")) + "\n");
    }

    /// <summary>Reads a log back: column name to (step, value) series.</summary>
    public static Dictionary<string, List<(int Step, double Value)>> Read(string path)
    {
        var result = new Dictionary<string, List<(int, double)>>();
        var lines = File.ReadAllLines(path);
        if (lines.Length < 2) return result;
        var cols = lines[0].Split(',');
        for (int j = 1; j < cols.Length; j++) result[cols[j]] = new();
        foreach (var line in lines.Skip(1))
        {
            var c = line.Split(',');
            if (c.Length != cols.Length || !int.TryParse(c[0], out int step)) continue;
            for (int j = 1; j < cols.Length; j++)
                if (double.TryParse(c[j], NumberStyles.Float, CultureInfo.InvariantCulture, out var v)) result[cols[j]].Add((step, v));
        }
        return result;
    }

    /// <summary>Keeps the rows up to and including <paramref name="step"/> (used when a run resumes from a checkpoint).</summary>
    public static void TruncateAfter(string path, int step)
    {
        if (!File.Exists(path)) return;
        var lines = File.ReadAllLines(path);
        var keep = lines.Take(1).Concat(lines.Skip(1).Where(l => int.TryParse(l.Split(',')[0], out var s) && s <= step));
        File.WriteAllLines(path, keep);
    }
}
