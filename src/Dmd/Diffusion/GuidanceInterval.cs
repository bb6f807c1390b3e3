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
public sealed record GuidanceInterval(double Lo, double Hi)
{
    /// <summary>Whether guidance applies at <paramref name="sigma"/>.</summary>
    public bool Contains(double sigma) => sigma > Lo && sigma <= Hi;

    /// <summary>
    /// Parses "LO,HI" (LO &lt; HI, both at least 0); null or empty = no interval (guidance at every level). A bad value
    /// is a <see cref="DmdInputException"/> naming <paramref name="option"/>.
    /// </summary>
    public static GuidanceInterval? Parse(string? text, string option)
    {
        if (string.IsNullOrWhiteSpace(text)) return null;
        var parts = text.Split(',');
        if (parts.Length == 2 && double.TryParse(parts[0], NumberStyles.Float, CultureInfo.InvariantCulture, out var lo)
                              && double.TryParse(parts[1], NumberStyles.Float, CultureInfo.InvariantCulture, out var hi)
                              && lo >= 0 && hi > lo)
            return new GuidanceInterval(lo, hi);
        throw new DmdInputException($"{option} '{text}': give the noise levels LO,HI (0 <= LO < HI) between which guidance applies, e.g. 0.28,5.42");
    }

    /// <summary>"(LO, HI]" for messages and titles.</summary>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"({Lo:G}, {Hi:G}]");
}
