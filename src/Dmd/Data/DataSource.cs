namespace Dmd.Data;

/// <summary>
/// What a <c>--data</c> value names, parsed in one place: a built-in 2-D distribution (<c>ring8</c>, <c>grid25</c>,
/// <c>moons</c>, <c>checkerboard</c>), your points (<c>csv:PATH</c>), Fashion-MNIST (<c>fashion-mnist</c> from the
/// Debian package, or <c>fashion-mnist:FOLDER</c>) or a folder of images (<c>folder:PATH</c>).
/// </summary>
/// <param name="Kind">"points" (built-in), "csv", "fashion-mnist" or "folder".</param>
/// <param name="Argument">The distribution's name, the CSV file, the Fashion-MNIST folder (null = the Debian one) or the image folder.</param>
public sealed record DataSource(string Kind, string? Argument)
{
    /// <summary>The <c>--data</c> text this source was parsed from.</summary>
    public override string ToString() => Kind switch
    {
        "points" => Argument!,
        "fashion-mnist" when Argument is null => "fashion-mnist",
        _ => $"{Kind}:{Argument}",
    };

    /// <summary>True for image data (Fashion-MNIST or a folder of images).</summary>
    public bool IsImage => Kind is "fashion-mnist" or "folder";

    /// <summary>Parses a <c>--data</c> value; an unknown one is a one-line error listing what is accepted.</summary>
    public static DataSource Parse(string text)
    {
        static string After(string text, string prefix)
        {
            var rest = text[prefix.Length..];
            if (rest.Length == 0) throw new DmdInputException($"--data {text}: give a path after '{prefix}'");
            return rest;
        }
        if (text.StartsWith("csv:", StringComparison.OrdinalIgnoreCase)) return new("csv", After(text, "csv:"));
        if (text == "fashion-mnist") return new("fashion-mnist", null);
        if (text.StartsWith("fashion-mnist:")) return new("fashion-mnist", After(text, "fashion-mnist:"));
        if (text.StartsWith("folder:")) return new("folder", After(text, "folder:"));
        if (PointDistributions.Names.Contains(text)) return new("points", text);
        throw new DmdInputException($"--data '{text}' is not a data source: use one of {string.Join(", ", PointDistributions.Names)}, " +
                                    "csv:PATH (points), fashion-mnist, fashion-mnist:FOLDER or folder:PATH (images)");
    }

    /// <summary>Point data: <paramref name="n"/> draws of a built-in distribution, or the CSV's points.</summary>
    public PointSet LoadPoints(int n, long seed, int? expectedDim = null)
    {
        if (IsImage) throw new DmdInputException($"--data {this} is image data: train it with `dmd train-image-teacher --data {this}`");
        return Kind == "csv" ? PointSet.FromCsv(Argument!, expectedDim) : PointDistributions.Sample(Argument!, n, seed);
    }

    /// <summary>Image data at <paramref name="resolution"/> (Fashion-MNIST: 32, its 28x28 images padded).</summary>
    public ImageDataset LoadImages(int? resolution, int channels, bool xflip)
    {
        switch (Kind)
        {
            case "fashion-mnist":
                if (resolution is int r && r != 32)
                    throw new DmdInputException($"--resolution {r}: Fashion-MNIST is trained at 32x32 (28x28 padded); leave --resolution out");
                return FashionMnist.Load(test: false, folder: Argument, padTo32: true, randomFlip: xflip);
            case "folder":
                return ImageDataset.FromFolder(Argument!, resolution ?? 32, channels, xflip);
            default:
                throw new DmdInputException($"--data {this} is not an image source: use fashion-mnist, fashion-mnist:FOLDER or folder:PATH " +
                                            "(for 2-D points use `dmd train-teacher`)");
        }
    }

    /// <summary>The Fashion-MNIST folder (null = the Debian package's) for commands that take only Fashion-MNIST.</summary>
    public string? FashionMnistFolder(string what) => Kind == "fashion-mnist" ? Argument
        : throw new DmdInputException($"--data {this}: {what} trains on Fashion-MNIST only; give fashion-mnist or fashion-mnist:FOLDER");
}
