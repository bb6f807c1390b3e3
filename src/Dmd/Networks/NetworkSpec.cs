using Dmd.Diffusion;
using Dmd.IO;
using System.Text.Json.Serialization;

namespace Dmd.Networks;

/// <summary>
/// Everything needed to rebuild a network from its checkpoint: saved as JSON beside the weights.
/// Fields that a kind does not use keep their defaults (JSON written before a field existed reads back with it).
/// </summary>
/// <param name="Kind">Architecture: "mlp" (vector data), "ddpmpp" (<see cref="SongUNet"/>, DDPM++ settings) or
/// "adm" (<see cref="DhariwalUNet"/>) for images.</param>
/// <param name="Shape">Shape of one sample without the batch dimension: [2] for 2-D points, [C, H, W] with H = W
/// (the U-Nets' resolution) for images.</param>
/// <param name="LabelDim">Number of classes (0 = unconditional).</param>
/// <param name="SigmaData">sigma_data of the EDM preconditioning.</param>
/// <param name="Width">Hidden width (mlp).</param>
/// <param name="Depth">Number of residual blocks (mlp).</param>
/// <param name="ModelChannels">Base channel count (U-Nets): EDM's <c>model_channels</c>.</param>
/// <param name="ChannelMult">Channel multiplier per resolution (U-Nets): EDM's <c>channel_mult</c>; null = the network's default.</param>
/// <param name="NumBlocks">Residual blocks per resolution (U-Nets): EDM's <c>num_blocks</c>.</param>
/// <param name="AttnResolutions">Resolutions with self-attention (U-Nets): EDM's <c>attn_resolutions</c>; null = the network's default.</param>
/// <param name="Dropout">Dropout probability (U-Nets).</param>
/// <param name="AugmentDim">Augmentation label width (U-Nets; 9 for EDM's CIFAR-10 checkpoints, 0 = none).</param>
/// <param name="ChannelsPerHead">Channels per attention head (adm; EDM uses 64).</param>
public sealed record NetworkSpec(
    string Kind = "mlp",
    int[]? Shape = null,
    int LabelDim = 0,
    double SigmaData = 0.5,
    int Width = 256,
    int Depth = 4,
    int ModelChannels = 128,
    int[]? ChannelMult = null,
    int NumBlocks = 4,
    int[]? AttnResolutions = null,
    double Dropout = 0.10,
    int AugmentDim = 0,
    int ChannelsPerHead = 64)
{
    /// <summary>Shape of one sample: <see cref="Shape"/>, or [2] when it is null.</summary>
    [JsonIgnore] public int[] SampleShape => Shape ?? new[] { 2 };

    /// <summary>True for the image kinds (the U-Nets), whose samples are (C, H, W).</summary>
    [JsonIgnore] public bool IsImage => Kind is "ddpmpp" or "adm";

    /// <summary>Builds the preconditioned denoiser this spec describes (freshly initialised).</summary>
    public EdmPrecond Build() => new(BuildBackbone(), SigmaData);

    /// <summary>Builds the raw network F (without the EDM preconditioning).</summary>
    public EdmBackbone BuildBackbone()
    {
        switch (Kind)
        {
            case "mlp" when SampleShape.Length == 1:
                return new MlpBackbone(SampleShape[0], Width, Depth, LabelDim);
            case "mlp":
                throw new DmdInputException($"the mlp network takes vectors, not samples of shape [{string.Join(",", SampleShape)}]; use kind ddpmpp or adm for images");
            case "ddpmpp":
            {
                var (c, res) = ImageGeometry(new[] { 1, 2, 2, 2 });
                return new SongUNet(imgResolution: res, inChannels: c, outChannels: c, labelDim: LabelDim, augmentDim: AugmentDim,
                    modelChannels: ModelChannels, channelMult: ChannelMult, channelMultEmb: 4, numBlocks: NumBlocks,
                    attnResolutions: AttnResolutions, dropout: Dropout,
                    embeddingType: NoiseEmbeddingType.Positional, channelMultNoise: 1,
                    encoderType: SongEncoderType.Standard, decoderType: SongDecoderType.Standard, resampleFilter: new[] { 1.0, 1.0 });
            }
            case "adm":
            {
                var (c, res) = ImageGeometry(new[] { 1, 2, 3, 4 });
                return new DhariwalUNet(imgResolution: res, inChannels: c, outChannels: c, labelDim: LabelDim, augmentDim: AugmentDim,
                    modelChannels: ModelChannels, channelMult: ChannelMult, channelMultEmb: 4, numBlocks: NumBlocks,
                    attnResolutions: AttnResolutions, dropout: Dropout, channelsPerHead: ChannelsPerHead);
            }
            default:
                throw new DmdInputException($"unknown network kind '{Kind}': use mlp, ddpmpp or adm");
        }
    }

    /// <summary>Channels and resolution from Shape = [C, H, W], checked against the U-Net's down-sampling.</summary>
    (int Channels, int Resolution) ImageGeometry(int[] defaultMult)
    {
        var s = SampleShape;
        if (s.Length != 3 || s[1] != s[2] || s[0] < 1)
            throw new DmdInputException($"the {Kind} network takes square images of shape [C, H, W] with H = W, not [{string.Join(",", s)}]");
        int levels = (ChannelMult ?? defaultMult).Length;
        if (levels < 1 || s[1] % (1 << (levels - 1)) != 0)
            throw new DmdInputException($"resolution {s[1]} cannot be halved {levels - 1} times (channel_mult has {levels} levels); use fewer levels or a resolution divisible by {1 << Math.Max(0, levels - 1)}");
        if (ModelChannels < 1 || NumBlocks < 1)
            throw new DmdInputException($"model channels ({ModelChannels}) and blocks per resolution ({NumBlocks}) must be positive");
        return (s[0], s[1]);
    }

    /// <summary>
    /// The small class-conditional Fashion-MNIST teacher for CPU training: 32x32x1 (the 28x28 images padded),
    /// 10 classes, DDPM++ with channel_mult [1,2,2] (32, 16, 8), 2 blocks per resolution, attention at 8x8.
    /// <paramref name="kind"/> "adm" gives the ADM counterpart (32 channels per head so the narrow blocks keep attention).
    /// </summary>
    public static NetworkSpec FashionMnistTeacher(string kind = "ddpmpp", int modelChannels = 32, int numBlocks = 2, double dropout = 0.10) =>
        SmallImage(kind, channels: 1, resolution: 32, labelDim: 10, modelChannels, numBlocks, dropout);

    /// <summary>
    /// The MLP spec for a point set: its dimension and classes, sigma_data = the standard deviation of all its
    /// coordinates rounded to 4 decimals (design.md section 2), <paramref name="width"/> x <paramref name="depth"/> blocks.
    /// </summary>
    public static NetworkSpec ForPoints(Data.PointSet points, int width = 256, int depth = 4) =>
        new("mlp", points.Shape, points.NumClasses, Math.Round(points.Std, 4), width, depth);

    /// <summary>
    /// A small U-Net spec for CPU-sized image teachers (see <see cref="EdmUNetPresets.SmallDdpmpp"/>):
    /// channel_mult [1,2,2] (or [1,2] below 16 pixels), attention at resolution/4, sigma_data 0.5.
    /// </summary>
    public static NetworkSpec SmallImage(string kind, int channels, int resolution, int labelDim, int modelChannels = 32,
                                         int numBlocks = 2, double dropout = 0.10)
    {
        var mult = resolution >= 16 ? new[] { 1, 2, 2 } : new[] { 1, 2 };
        return new NetworkSpec(kind, new[] { channels, resolution, resolution }, labelDim, 0.5,
            ModelChannels: modelChannels, ChannelMult: mult, NumBlocks: numBlocks, AttnResolutions: new[] { resolution / 4 },
            Dropout: dropout, ChannelsPerHead: kind == "adm" ? 32 : 64);
    }

    /// <summary>Value equality, arrays compared element by element (a record compares them by reference).</summary>
    public bool Equals(NetworkSpec? other) =>
        other is not null && Kind == other.Kind && Same(Shape, other.Shape) && LabelDim == other.LabelDim &&
        SigmaData.Equals(other.SigmaData) && Width == other.Width && Depth == other.Depth &&
        ModelChannels == other.ModelChannels && Same(ChannelMult, other.ChannelMult) && NumBlocks == other.NumBlocks &&
        Same(AttnResolutions, other.AttnResolutions) && Dropout.Equals(other.Dropout) &&
        AugmentDim == other.AugmentDim && ChannelsPerHead == other.ChannelsPerHead;

    /// <summary>A hash consistent with <see cref="Equals(NetworkSpec)"/> (arrays enter by length only).</summary>
    public override int GetHashCode() => HashCode.Combine(Kind, LabelDim, SigmaData, Width, Depth, ModelChannels, NumBlocks,
        HashCode.Combine(Dropout, AugmentDim, ChannelsPerHead, Shape?.Length, ChannelMult?.Length, AttnResolutions?.Length));

    static string List(int[]? a) => a is null ? "default" : $"[{string.Join(",", a)}]";

    static bool Same(int[]? a, int[]? b) => a is null ? b is null : b is not null && a.SequenceEqual(b);

    /// <summary>One line for messages: the kind and the fields it uses.</summary>
    public override string ToString() => IsImage
        ? $"{Kind} [{string.Join(",", SampleShape)}], {LabelDim} classes, model channels {ModelChannels}, channel_mult {List(ChannelMult)}, " +
          $"{NumBlocks} blocks, attention at {List(AttnResolutions)}, dropout {Dropout}"
        : $"{Kind} [{string.Join(",", SampleShape)}], {LabelDim} classes, width {Width}, depth {Depth}, sigma_data {SigmaData}";
}
