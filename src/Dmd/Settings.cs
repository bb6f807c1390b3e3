using System.Reflection;

namespace Dmd;

/// <summary>
/// Range checks of settings records, done once where a record enters the library (trainers, experiments), so a bad value
/// is a one-line error naming the setting instead of a NaN run or a model that was never trained. Names are given as
/// the command-line tool spells them (<c>batch-size</c>), which is also the record's field in kebab case.
/// </summary>
internal static class Settings
{
    /// <summary>Every floating-point setting of a record (and of the records inside it) must be a finite number.</summary>
    public static void RequireFinite(object record, string prefix = "")
    {
        foreach (var p in record.GetType().GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.CanRead && p.GetIndexParameters().Length == 0))
        {
            var v = p.GetValue(record);
            if (v is double d && !double.IsFinite(d))
                throw new DmdInputException($"{prefix}{Kebab(p.Name)} {d}: must be a finite number");
            if (v is not null && p.PropertyType.IsClass && p.PropertyType != typeof(string) && !p.PropertyType.IsArray
                && p.PropertyType.Namespace?.StartsWith("Dmd") == true)
                RequireFinite(v, prefix);
        }
    }

    /// <summary>An integer setting of at least <paramref name="min"/>.</summary>
    public static void AtLeast(string name, long value, long min)
    {
        if (value < min) throw new DmdInputException($"{name} {value}: must be at least {min}");
    }

    /// <summary>A finite real setting of at least <paramref name="min"/>.</summary>
    public static void AtLeast(string name, double value, double min)
    {
        if (!(value >= min) || !double.IsFinite(value)) throw new DmdInputException($"{name} {value}: must be a number of at least {min}");
    }

    /// <summary>A positive real setting.</summary>
    public static void Positive(string name, double value)
    {
        if (!(value > 0) || !double.IsFinite(value)) throw new DmdInputException($"{name} {value}: must be a positive number");
    }

    /// <summary>A real setting in [lo, hi) (or [lo, hi] when <paramref name="hiInclusive"/>).</summary>
    public static void InRange(string name, double value, double lo, double hi, bool hiInclusive = false)
    {
        if (!(value >= lo) || !(hiInclusive ? value <= hi : value < hi))
            throw new DmdInputException($"{name} {value}: must lie in [{lo}, {hi}{(hiInclusive ? "]" : ")")}");
    }

    /// <summary>CamelCase to kebab-case, as the command-line options are named.</summary>
    public static string Kebab(string s) =>
        string.Concat(s.Select((ch, i) => char.IsUpper(ch) && i > 0 ? "-" + char.ToLowerInvariant(ch) : char.ToLowerInvariant(ch).ToString()));
}
