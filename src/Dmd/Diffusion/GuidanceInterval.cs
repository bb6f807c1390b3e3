using System.Globalization;

namespace Dmd.Diffusion;

/// <summary>
/// The noise levels where classifier-free guidance applies: sigma in (Lo, Hi]; elsewhere the conditional output is used
/// unchanged (Kynkäänniemi et al., "Applying guidance in a limited interval improves sample and distribution quality in
/// diffusion models", NeurIPS 2024; EDM2's guidance interval). Guidance at the highest levels costs diversity, at the
/// lowest it only sharpens and saturates.
/// </summary>
/// <param name="Lo">Exclusive lower end of the interval.</param>
/// <param name="Hi">Inclusive upper end.</param>
/// <param name="Outside">The guidance scale at the other levels: 1 (default) = the conditional output, as in the paper;
/// below 1 it mixes in the unconditional output there (at the highest levels: more varied samples, less class-typical).</param>
public sealed record GuidanceInterval(double Lo, double Hi, double Outside = 1)
{
    /// <summary>Whether guidance applies at <paramref name="sigma"/>.</summary>
    public bool Contains(double sigma) => sigma > Lo && sigma <= Hi;

    /// <summary>Whether a guidance scale of <paramref name="scale"/> inside the interval guides anywhere (inside or outside).</summary>
    public bool Guides(double scale) => scale != 1 || Outside != 1;

    /// <summary>Whether scale <paramref name="scale"/> with <paramref name="interval"/> (null = every level) guides anywhere.</summary>
    public static bool Guides(double scale, GuidanceInterval? interval) => interval?.Guides(scale) ?? scale != 1;

    /// <summary>
    /// Parses "LO,HI" (LO &lt; HI, both at least 0) or "LO,HI,W" (W &gt;= 0: the scale outside the interval); null or
    /// empty = no interval (guidance at every level). A bad value is a <see cref="DmdInputException"/> naming <paramref name="option"/>.
    /// </summary>
    public static GuidanceInterval? Parse(string? text, string option)
    {
        if (string.IsNullOrWhiteSpace(text)) return null;
        var parts = text.Split(',');
        double outside = 1;
        if (parts.Length is 2 or 3 && double.TryParse(parts[0], NumberStyles.Float, CultureInfo.InvariantCulture, out var lo)
                                   && double.TryParse(parts[1], NumberStyles.Float, CultureInfo.InvariantCulture, out var hi)
                                   && lo >= 0 && hi > lo
                                   && (parts.Length == 2 || double.TryParse(parts[2], NumberStyles.Float, CultureInfo.InvariantCulture, out outside) && outside >= 0))
            return new GuidanceInterval(lo, hi, outside);
        throw new DmdInputException($"{option} '{text}': give the noise levels LO,HI (0 <= LO < HI) between which guidance applies, e.g. 0.28,5.42, optionally with the scale elsewhere (default 1), e.g. 0.28,5.42,0.8");
    }

    /// <summary>"(LO, HI]" (and ", W elsewhere" when the outside scale is not 1) for messages and titles.</summary>
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"({Lo:G}, {Hi:G}]{(Outside != 1 ? $", {Outside:G} elsewhere" : "")}");
}
