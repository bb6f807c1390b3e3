namespace Dmd.Data;

/// <summary>The images a teacher trains on, as `dmd train-image-teacher` takes them; <see cref="Load"/> reads them.</summary>
public sealed record ImageDataOptions
{
    /// <summary>A <c>--data</c> text (<see cref="DataSource.Parse"/>): fashion-mnist, fashion-mnist:FOLDER or folder:PATH.</summary>
    public string Data { get; init; } = "fashion-mnist";

    /// <summary>Image side for a folder (null: 32; Fashion-MNIST is always its 28x28 padded to 32).</summary>
    public int? Resolution { get; init; }

    /// <summary>1 (greyscale) or 3 (RGB) for a folder.</summary>
    public int Channels { get; init; } = 3;

    /// <summary>Use only the first N training images (quick runs); null: all.</summary>
    public int? TrainImages { get; init; }

    /// <summary>Ignore the class labels.</summary>
    public bool Unconditional { get; init; }

    /// <summary>Random left-right flips (EDM's --xflip).</summary>
    public bool XFlip { get; init; }

    /// <summary>Loads the images, keeps the first <see cref="TrainImages"/>, drops the labels if <see cref="Unconditional"/>.</summary>
    public ImageDataset Load()
    {
        if (TrainImages is int n && n < 1) throw new DmdInputException($"--train-images {n}: give a positive number of images");
        var set = DataSource.Parse(Data).LoadImages(Resolution, Channels, XFlip);
        if (TrainImages is int k) set = set.First(k);
        return Unconditional ? set.WithoutLabels() : set;
    }
}
