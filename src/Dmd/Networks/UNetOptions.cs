namespace Dmd.Networks;

/// <summary>
/// The U-Net of an image teacher as `dmd train-image-teacher` takes it (EDM's architecture options), with defaults for a
/// small CPU-sized teacher; <see cref="For(int, int, int)"/> makes the spec for images of a given shape.
/// </summary>
public sealed record UNetOptions
{
    /// <summary>"ddpmpp" (EDM's SongUNet, <see cref="DdpmppSpec"/>) or "adm" (EDM's DhariwalUNet, <see cref="AdmSpec"/>).</summary>
    public string Arch { get; init; } = "ddpmpp";

    /// <summary>Base channel count (EDM's model_channels).</summary>
    public int ModelChannels { get; init; } = 32;

    /// <summary>Channel multiplier per resolution; null: [1,2,2], or [1,2] below 16 pixels.</summary>
    public int[]? ChannelMult { get; init; }

    /// <summary>Residual blocks per resolution.</summary>
    public int NumBlocks { get; init; } = 2;

    /// <summary>Resolutions with self-attention; null: resolution/4; empty: none.</summary>
    public int[]? AttnResolutions { get; init; }

    /// <summary>Dropout rate inside the U-Net blocks (EDM: 0.10 for CIFAR-10).</summary>
    public double Dropout { get; init; } = 0.10;

    /// <summary>
    /// The spec for <paramref name="channels"/> x <paramref name="resolution"/> x <paramref name="resolution"/> images in
    /// <paramref name="labelDim"/> classes (0 = unconditional), sigma_data 0.5; ADM gets 32 channels per head so the narrow
    /// blocks keep attention. An unknown <see cref="Arch"/> is a one-line error.
    /// </summary>
    public UNetSpec For(int channels, int resolution, int labelDim)
    {
        UNetSpec net = Arch switch
        {
            "ddpmpp" => new DdpmppSpec(),
            "adm" => new AdmSpec { ChannelsPerHead = 32 },
            _ => throw new DmdInputException($"arch '{Arch}' is not a U-Net: use ddpmpp or adm"),
        };
        return net with
        {
            Shape = new[] { channels, resolution, resolution }, LabelDim = labelDim, SigmaData = 0.5,
            ModelChannels = ModelChannels, ChannelMult = ChannelMult ?? (resolution >= 16 ? new[] { 1, 2, 2 } : new[] { 1, 2 }),
            NumBlocks = NumBlocks, AttnResolutions = AttnResolutions ?? new[] { resolution / 4 }, Dropout = Dropout,
        };
    }

    /// <summary>The spec for a data set's images ([C, H, W]) and classes.</summary>
    public UNetSpec For(Data.IDataSource data) =>
        data.Shape.Length == 3 ? For(data.Shape[0], data.Shape[1], data.NumClasses)
                               : throw new DmdInputException($"a U-Net needs images of shape [C, H, W], not samples of shape [{string.Join(",", data.Shape)}]");

    /// <summary>
    /// The small class-conditional Fashion-MNIST teacher for CPU training: 32x32x1 (the 28x28 images padded),
    /// 10 classes, DDPM++ with channel_mult [1,2,2] (32, 16, 8), 2 blocks per resolution, attention at 8x8
    /// (the defaults of these options).
    /// </summary>
    public UNetSpec FashionMnistTeacher() => For(channels: 1, resolution: 32, labelDim: 10);
}
