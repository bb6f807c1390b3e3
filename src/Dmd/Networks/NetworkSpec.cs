using Dmd.Diffusion;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace Dmd.Networks;

/// <summary>
/// Everything needed to rebuild a network from its checkpoint, saved as JSON beside the weights: one record per
/// network kind (<see cref="MlpSpec"/>, <see cref="DdpmppSpec"/>, <see cref="AdmSpec"/>), each with only its own
/// fields, told apart in JSON by <c>"Kind"</c>. Files written before the kinds had their own records (every kind's
/// fields in one object) still load: the fields of other kinds are skipped, a missing <c>Kind</c> means "mlp".
/// Value equality compares arrays element by element.
/// </summary>
[JsonConverter(typeof(NetworkSpecJson<NetworkSpec>))]
public abstract record NetworkSpec
{
    /// <summary>Architecture: "mlp" (vector data), "ddpmpp" or "adm" (images); the JSON discriminator.</summary>
    [JsonPropertyOrder(-2)] // the fields a file shows first: Kind, then those every kind has, then the kind's own
    public string Kind => KindOf[GetType()];

    /// <summary>Shape of one sample without the batch dimension: [2] for 2-D points, [C, H, W] with H = W
    /// (the U-Nets' resolution) for images.</summary>
    [JsonPropertyOrder(-1)] public int[]? Shape { get; init; }

    /// <summary>Number of classes (0 = unconditional).</summary>
    [JsonPropertyOrder(-1)] public int LabelDim { get; init; }

    /// <summary>sigma_data of the EDM preconditioning.</summary>
    [JsonPropertyOrder(-1)] public double SigmaData { get; init; } = 0.5;

    /// <summary>Shape of one sample: <see cref="Shape"/>, or [2] when it is null.</summary>
    [JsonIgnore] public int[] SampleShape => Shape ?? new[] { 2 };

    /// <summary>True for the image kinds (the U-Nets), whose samples are (C, H, W).</summary>
    [JsonIgnore] public bool IsImage => this is UNetSpec;

    /// <summary>True for a latent text-to-image denoiser (<see cref="SdUNetSpec"/>): samples are latents (C, H, W), conditions text contexts.</summary>
    [JsonIgnore] public bool IsLatent => this is SdUNetSpec;

    /// <summary>Builds the preconditioned denoiser this spec describes (freshly initialised).</summary>
    public virtual EdmPrecond Build() => new(BuildBackbone(), SigmaData);

    /// <summary>Builds the raw network F (without the EDM preconditioning).</summary>
    public abstract EdmBackbone BuildBackbone();

    /// <summary>The same network with dropout off (DMD trains all three networks without it); kinds without dropout return themselves.</summary>
    public virtual NetworkSpec WithoutDropout() => this;

    /// <summary>Value equality: the same kind and fields, arrays compared element by element (a record compares them by reference).</summary>
    public virtual bool Equals(NetworkSpec? other) =>
        other is not null && EqualityContract == other.EqualityContract && Same(Shape, other.Shape) &&
        LabelDim == other.LabelDim && SigmaData.Equals(other.SigmaData);

    /// <summary>A hash consistent with <see cref="Equals(NetworkSpec)"/> (arrays enter by length only).</summary>
    public override int GetHashCode() => HashCode.Combine(EqualityContract, Shape?.Length, LabelDim, SigmaData);

    /// <summary>Arrays equal element by element (both null counts as equal).</summary>
    protected static bool Same(int[]? a, int[]? b) => a is null ? b is null : b is not null && a.SequenceEqual(b);

    /// <summary>An array for messages: [1,2,2], or "default" for null.</summary>
    protected static string List(int[]? a) => a is null ? "default" : $"[{string.Join(",", a)}]";

    /// <summary>The kind names and their records (the JSON discriminator's values).</summary>
    internal static readonly IReadOnlyDictionary<string, Type> Kinds = new Dictionary<string, Type>
    {
        ["mlp"] = typeof(MlpSpec), ["ddpmpp"] = typeof(DdpmppSpec), ["adm"] = typeof(AdmSpec), ["sd-unet"] = typeof(SdUNetSpec),
    };

    static readonly Dictionary<Type, string> KindOf = Kinds.ToDictionary(kv => kv.Value, kv => kv.Key);

    /// <summary>Only the kinds in <see cref="Kinds"/> derive from it (a network a spec does not describe is built by a factory; see DmdTrainer).</summary>
    private protected NetworkSpec() { }
}

/// <summary>The residual MLP denoiser (<see cref="MlpBackbone"/>) for vector data such as 2-D points.</summary>
public sealed record MlpSpec : NetworkSpec
{
    /// <summary>Hidden width.</summary>
    public int Width { get; init; } = 256;

    /// <summary>Number of residual blocks.</summary>
    public int Depth { get; init; } = 4;

    /// <inheritdoc/>
    public override EdmBackbone BuildBackbone() => SampleShape.Length == 1
        ? new MlpBackbone(SampleShape[0], Width, Depth, LabelDim)
        : throw new DmdInputException($"the mlp network takes vectors, not samples of shape [{string.Join(",", SampleShape)}]; use kind ddpmpp or adm for images");

    /// <summary>
    /// The MLP spec for a point set: its dimension and classes, sigma_data = the standard deviation of all its
    /// coordinates rounded to 4 decimals (design.md section 2), <paramref name="width"/> x <paramref name="depth"/> blocks.
    /// </summary>
    public static MlpSpec ForPoints(Data.PointSet points, int width = 256, int depth = 4) =>
        new() { Shape = points.Shape, LabelDim = points.NumClasses, SigmaData = Math.Round(points.Std, 4), Width = width, Depth = depth };

    /// <summary>One line for messages: the kind and its fields.</summary>
    public override string ToString() =>
        $"{Kind} [{string.Join(",", SampleShape)}], {LabelDim} classes, width {Width}, depth {Depth}, sigma_data {SigmaData}";
}

/// <summary>
/// The fields EDM's two U-Nets share (NVlabs/edm <c>networks.py</c>: <c>model_channels</c>, <c>channel_mult</c>,
/// <c>num_blocks</c>, <c>attn_resolutions</c>, <c>dropout</c>, <c>augment_dim</c>); the resolution and channels come
/// from <see cref="NetworkSpec.Shape"/> = [C, H, W].
/// </summary>
[JsonConverter(typeof(NetworkSpecJson<UNetSpec>))]
public abstract record UNetSpec : NetworkSpec
{
    /// <summary>Base channel count: EDM's <c>model_channels</c>.</summary>
    public int ModelChannels { get; init; } = 128;

    /// <summary>Channel multiplier per resolution: EDM's <c>channel_mult</c>; null = the network's default.</summary>
    public int[]? ChannelMult { get; init; }

    /// <summary>Residual blocks per resolution: EDM's <c>num_blocks</c>.</summary>
    public int NumBlocks { get; init; } = 4;

    /// <summary>Resolutions with self-attention: EDM's <c>attn_resolutions</c>; null = the network's default.</summary>
    public int[]? AttnResolutions { get; init; }

    /// <summary>Dropout probability inside the blocks.</summary>
    public double Dropout { get; init; } = 0.10;

    /// <summary>Augmentation label width (9 for EDM's CIFAR-10 checkpoints, 0 = none).</summary>
    public int AugmentDim { get; init; }

    /// <summary>Only the U-Net kinds derive from it.</summary>
    private protected UNetSpec() { }

    /// <inheritdoc/>
    public override NetworkSpec WithoutDropout() => this with { Dropout = 0 };

    /// <summary>Channels and resolution from Shape = [C, H, W], checked against the U-Net's down-sampling
    /// (<paramref name="defaultMult"/>: the network's channel_mult where <see cref="ChannelMult"/> is null).</summary>
    protected (int Channels, int Resolution) ImageGeometry(int[] defaultMult)
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

    /// <summary>Value equality of the shared fields, arrays element by element.</summary>
    public virtual bool Equals(UNetSpec? other) =>
        other is not null && base.Equals(other) && ModelChannels == other.ModelChannels && Same(ChannelMult, other.ChannelMult) &&
        NumBlocks == other.NumBlocks && Same(AttnResolutions, other.AttnResolutions) && Dropout.Equals(other.Dropout) &&
        AugmentDim == other.AugmentDim;

    /// <summary>A hash consistent with <see cref="Equals(UNetSpec)"/> (arrays enter by length only).</summary>
    public override int GetHashCode() => HashCode.Combine(base.GetHashCode(), ModelChannels, ChannelMult?.Length, NumBlocks,
                                                          AttnResolutions?.Length, Dropout, AugmentDim);

    /// <summary>One line for messages: the kind and the fields it uses.</summary>
    public sealed override string ToString() =>
        $"{Kind} [{string.Join(",", SampleShape)}], {LabelDim} classes, model channels {ModelChannels}, channel_mult {List(ChannelMult)}, " +
        $"{NumBlocks} blocks, attention at {List(AttnResolutions)}, dropout {Dropout}";
}

/// <summary>EDM's DDPM++ network: <see cref="SongUNet"/> with <c>train.py --arch=ddpmpp</c>'s settings (default channel_mult [1,2,2,2]).</summary>
public sealed record DdpmppSpec : UNetSpec
{
    /// <inheritdoc/>
    public override EdmBackbone BuildBackbone()
    {
        var (c, res) = ImageGeometry(new[] { 1, 2, 2, 2 });
        return new SongUNet(imgResolution: res, inChannels: c, outChannels: c, labelDim: LabelDim, augmentDim: AugmentDim,
            modelChannels: ModelChannels, channelMult: ChannelMult, channelMultEmb: 4, numBlocks: NumBlocks,
            attnResolutions: AttnResolutions, dropout: Dropout,
            embeddingType: NoiseEmbeddingType.Positional, channelMultNoise: 1,
            encoderType: SongEncoderType.Standard, decoderType: SongDecoderType.Standard, resampleFilter: new[] { 1.0, 1.0 });
    }
}

/// <summary>EDM's ADM network: <see cref="DhariwalUNet"/> (default channel_mult [1,2,3,4]).</summary>
public sealed record AdmSpec : UNetSpec
{
    /// <summary>Channels per attention head (EDM uses 64).</summary>
    [JsonPropertyOrder(1)] public int ChannelsPerHead { get; init; } = 64;

    /// <inheritdoc/>
    public override EdmBackbone BuildBackbone()
    {
        var (c, res) = ImageGeometry(new[] { 1, 2, 3, 4 });
        return new DhariwalUNet(imgResolution: res, inChannels: c, outChannels: c, labelDim: LabelDim, augmentDim: AugmentDim,
            modelChannels: ModelChannels, channelMult: ChannelMult, channelMultEmb: 4, numBlocks: NumBlocks,
            attnResolutions: AttnResolutions, dropout: Dropout, channelsPerHead: ChannelsPerHead);
    }
}

/// <summary>
/// Reads a <see cref="NetworkSpec"/> as the record its <c>"Kind"</c> names (in any position; "mlp" when missing), skipping
/// the fields of other kinds that files written before the per-kind records carry; writes the kind's record, Kind first.
/// On the abstract records (<typeparamref name="T"/>), so that a spec typed as one of them is written whole.
/// </summary>
internal sealed class NetworkSpecJson<T> : JsonConverter<T> where T : NetworkSpec
{
    /// <summary>Every field some kind has: a file may hold those of other kinds (written when one record had them all).</summary>
    static readonly HashSet<string> AnyKindsFields = NetworkSpec.Kinds.Values.SelectMany(FieldNames).ToHashSet();

    static IEnumerable<string> FieldNames(Type t) => t.GetProperties().Where(p => p.CanWrite).Select(p => p.Name);

    public override T Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (JsonNode.Parse(ref reader) is not JsonObject json) throw new JsonException("a network spec is a JSON object");
        try { _ = json.Count; } // reads the object's keys
        catch (ArgumentException e) { throw new JsonException($"a key appears twice ({e.Message})", e); }
        var kind = json["Kind"] is JsonValue v && v.TryGetValue(out string? k) ? k : json["Kind"] is null ? "mlp" : null;
        if (kind is null || !NetworkSpec.Kinds.TryGetValue(kind, out var type))
            throw new JsonException($"unknown network kind '{json["Kind"]}': use mlp, ddpmpp, adm or sd-unet");
        if (!typeof(T).IsAssignableFrom(type)) throw new JsonException($"a {kind} network is not a {typeof(T).Name}");
        var own = FieldNames(type).ToHashSet();
        var fields = new JsonObject();
        foreach (var (name, value) in json)
            if (name != "Kind" && (own.Contains(name) || !AnyKindsFields.Contains(name))) fields[name] = value?.DeepClone();
        return (T)(fields.Deserialize(type, options) ?? throw new JsonException("empty network spec"));
    }

    public override void Write(Utf8JsonWriter writer, T value, JsonSerializerOptions options) =>
        JsonSerializer.Serialize(writer, value, value.GetType(), options);
}
