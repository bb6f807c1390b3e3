using System.Text.RegularExpressions;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dmd.Networks;

/// <summary>
/// The fields of a diffusers <c>AutoencoderKL</c> config.json that <see cref="AutoencoderKL"/> implements. The defaults
/// are Stable Diffusion v1.5's (runwayml/stable-diffusion-v1-5 vae/config.json; its scaling factor is diffusers' default).
/// </summary>
public sealed record AutoencoderKLConfig
{
    /// <summary>Image channels in (<c>in_channels</c>).</summary>
    public int InChannels { get; init; } = 3;
    /// <summary>Image channels out (<c>out_channels</c>).</summary>
    public int OutChannels { get; init; } = 3;
    /// <summary>Latent channels (<c>latent_channels</c>).</summary>
    public int LatentChannels { get; init; } = 4;
    /// <summary>Width of each resolution level of the encoder, mirrored by the decoder (<c>block_out_channels</c>).</summary>
    public int[] BlockOutChannels { get; init; } = { 128, 256, 512, 512 };
    /// <summary>Resnets per encoder block (the decoder's blocks have one more) (<c>layers_per_block</c>).</summary>
    public int LayersPerBlock { get; init; } = 2;
    /// <summary>GroupNorm groups (<c>norm_num_groups</c>).</summary>
    public int NormNumGroups { get; init; } = 32;
    /// <summary>Latent scale: the diffusion model sees latent * scaling_factor (<c>scaling_factor</c>).</summary>
    public double ScalingFactor { get; init; } = 0.18215;
    /// <summary>Image resolution the model was trained at (<c>sample_size</c>; informative).</summary>
    public int SampleSize { get; init; } = 512;

    /// <summary>
    /// Reads a diffusers <c>config.json</c> (or the folder holding it); a field set to something this implementation does
    /// not build is a one-line <see cref="DmdInputException"/> naming it.
    /// </summary>
    public static AutoencoderKLConfig Load(string folderOrFile)
    {
        var c = DiffusersConfig.Read(folderOrFile, nameof(AutoencoderKL));
        var d = new AutoencoderKLConfig();
        c.Refuse("act_fn", "silu");
        c.Refuse("shift_factor", null);
        c.Refuse("latents_mean", null);
        c.Refuse("latents_std", null);
        c.Refuse("use_quant_conv", true);
        c.Refuse("use_post_quant_conv", true);
        c.Refuse("mid_block_add_attention", true);
        var blocks = c.Ints("block_out_channels", d.BlockOutChannels);
        var down = c.Strings("down_block_types", Enumerable.Repeat("DownEncoderBlock2D", blocks.Length).ToArray());
        var up = c.Strings("up_block_types", Enumerable.Repeat("UpDecoderBlock2D", blocks.Length).ToArray());
        if (down.Length != blocks.Length || up.Length != blocks.Length)
            throw new DmdInputException($"{c.Path}: down_block_types / up_block_types need one entry per block_out_channels ({blocks.Length})");
        if (down.FirstOrDefault(t => t != "DownEncoderBlock2D") is string dt) throw c.Unsupported("down_block_types", dt, "DownEncoderBlock2D");
        if (up.FirstOrDefault(t => t != "UpDecoderBlock2D") is string ut) throw c.Unsupported("up_block_types", ut, "UpDecoderBlock2D");
        var cfg = new AutoencoderKLConfig
        {
            InChannels = c.Int("in_channels", d.InChannels),
            OutChannels = c.Int("out_channels", d.OutChannels),
            LatentChannels = c.Int("latent_channels", d.LatentChannels),
            BlockOutChannels = blocks,
            LayersPerBlock = c.Int("layers_per_block", d.LayersPerBlock),
            NormNumGroups = c.Int("norm_num_groups", d.NormNumGroups),
            ScalingFactor = c.Double("scaling_factor", d.ScalingFactor),
            SampleSize = c.Int("sample_size", d.SampleSize),
        };
        cfg.Validate(c.Path);
        return cfg;
    }

    internal void Validate(string source)
    {
        string? problem =
            BlockOutChannels.Length == 0 ? "block_out_channels is empty"
            : BlockOutChannels.FirstOrDefault(ch => ch <= 0 || ch % NormNumGroups != 0) is int bad and not 0
                ? $"block_out_channels entry {bad} is not a multiple of norm_num_groups {NormNumGroups}"
            : LayersPerBlock < 1 ? $"layers_per_block {LayersPerBlock} is not positive"
            : null;
        if (problem is not null) throw new DmdInputException($"{source}: {problem}");
    }
}

/// <summary>
/// diffusers' <c>AutoencoderKL</c>, Stable Diffusion's VAE, with diffusers' parameter names: <c>encoder</c> (conv_in,
/// DownEncoderBlock2D x n, mid block with one self-attention, conv_norm_out, conv_out to 2 x latent channels),
/// <c>quant_conv</c>, <c>post_quant_conv</c>, <c>decoder</c> (conv_in, mid block, UpDecoderBlock2D x n, conv_norm_out,
/// conv_out). <see cref="Encode"/> gives the diagonal Gaussian posterior of the latent; <see cref="Decode"/> maps a latent
/// back to an image in [-1, 1] (roughly). The diffusion model works on latent * <see cref="ScalingFactor"/>.
/// </summary>
public sealed class AutoencoderKL : nn.Module<Tensor, Tensor>
{
    private readonly Encoder encoder;
    private readonly Decoder decoder;
    private readonly Conv2d quant_conv;
    private readonly Conv2d post_quant_conv;

    /// <summary>Builds the autoencoder from <paramref name="config"/> (default: SD v1.5's).</summary>
    /// <param name="config">The architecture; null is SD v1.5's.</param>
    /// <param name="device">Where to allocate the parameters: null for the CPU, <c>torch.META</c> to build the shapes without memory.</param>
    public AutoencoderKL(AutoencoderKLConfig? config = null, Device? device = null) : base(nameof(AutoencoderKL))
    {
        Config = config ??= new AutoencoderKLConfig();
        config.Validate(nameof(AutoencoderKLConfig));
        long z = config.LatentChannels;
        encoder = new Encoder(config, device);
        decoder = new Decoder(config, device);
        quant_conv = nn.Conv2d(2 * z, 2 * z, 1, device: device);
        post_quant_conv = nn.Conv2d(z, z, 1, device: device);
        RegisterComponents();
    }

    /// <summary>The architecture this network was built from.</summary>
    public AutoencoderKLConfig Config { get; }

    /// <summary>The latent scale of the config (0.18215 for SD v1.5): the diffusion model sees <c>latent * ScalingFactor</c>.</summary>
    public double ScalingFactor => Config.ScalingFactor;

    /// <summary>
    /// Loads a diffusers <c>vae/</c> folder: <c>config.json</c> and <c>diffusion_pytorch_model.safetensors</c> by name. The
    /// mid blocks' attention parameters of older folders (<c>query/key/value/proj_attn</c>) are renamed to the current
    /// <c>to_q/to_k/to_v/to_out.0</c> as diffusers does. A missing, unexpected or mis-shaped tensor is one
    /// <see cref="DmdInputException"/> naming it. Returned in eval mode.
    /// </summary>
    public static AutoencoderKL FromPretrained(string folder)
    {
        var net = new AutoencoderKL(AutoencoderKLConfig.Load(folder));
        DiffusersConfig.LoadWeights(net, folder, RenameLegacyAttention);
        net.eval();
        return net;
    }

    /// <summary>
    /// Writes a diffusers <c>vae/</c> folder that <see cref="FromPretrained"/> and diffusers' <c>AutoencoderKL.from_pretrained</c>
    /// read: <c>config.json</c> (with the scaling factor) and the weights as <c>diffusion_pytorch_model.safetensors</c>.
    /// </summary>
    public void SavePretrained(string folder)
    {
        Directory.CreateDirectory(folder);
        IO.Checkpoint.SaveModule(this, Path.Combine(folder, DiffusersConfig.WeightsName));
        var c = Config;
        static System.Text.Json.Nodes.JsonArray Arr<T>(IEnumerable<T> v) => new(v.Select(x => System.Text.Json.Nodes.JsonValue.Create(x)).ToArray<System.Text.Json.Nodes.JsonNode?>());
        var json = new System.Text.Json.Nodes.JsonObject
        {
            ["_class_name"] = nameof(AutoencoderKL), ["_diffusers_version"] = "0.27.2", ["act_fn"] = "silu",
            ["block_out_channels"] = Arr(c.BlockOutChannels), ["down_block_types"] = Arr(c.BlockOutChannels.Select(_ => "DownEncoderBlock2D")),
            ["force_upcast"] = true, ["in_channels"] = c.InChannels, ["latent_channels"] = c.LatentChannels, ["layers_per_block"] = c.LayersPerBlock,
            ["norm_num_groups"] = c.NormNumGroups, ["out_channels"] = c.OutChannels, ["sample_size"] = c.SampleSize, ["scaling_factor"] = c.ScalingFactor,
            ["up_block_types"] = Arr(c.BlockOutChannels.Select(_ => "UpDecoderBlock2D")),
        };
        IO.Checkpoint.SaveJson(json, Path.Combine(folder, "config.json"));
    }

    private static readonly Regex LegacyAttention = new(@"^((?:encoder|decoder)\.mid_block\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$");

    /// <summary>diffusers' <c>_convert_deprecated_attention_blocks</c>: a legacy VAE attention tensor name to the current one.</summary>
    internal static string RenameLegacyAttention(string name)
    {
        var m = LegacyAttention.Match(name);
        if (!m.Success) return name;
        var to = m.Groups[2].Value switch { "query" => "to_q", "key" => "to_k", "value" => "to_v", _ => "to_out.0" };
        return $"{m.Groups[1].Value}.{to}.{m.Groups[3].Value}";
    }

    /// <summary>The posterior q(latent | image) of images [B, in_channels, H, W] in [-1, 1]: latents [B, latent_channels, H/f, W/f].</summary>
    public DiagonalGaussianDistribution Encode(Tensor image)
    {
        using var scope = NewDisposeScope();
        var posterior = new DiagonalGaussianDistribution(quant_conv.forward(encoder.forward(image)));
        posterior.Mean.MoveToOuterDisposeScope();
        posterior.LogVar.MoveToOuterDisposeScope();
        return posterior;
    }

    /// <summary>The image [B, out_channels, H*f, W*f] of latents [B, latent_channels, h, w] (unscaled: divide the diffusion model's by <see cref="ScalingFactor"/>).</summary>
    public Tensor Decode(Tensor latent)
    {
        using var scope = NewDisposeScope();
        return decoder.forward(post_quant_conv.forward(latent)).MoveToOuterDisposeScope();
    }

    /// <summary>Reconstruction: decodes the posterior's mode (diffusers' forward with sample_posterior false).</summary>
    public override Tensor forward(Tensor image) => Decode(Encode(image).Mode());
}

/// <summary>
/// diffusers <c>DiagonalGaussianDistribution</c>: the encoder's moments split along channels into mean and log-variance,
/// the latter clamped to [-30, 20].
/// </summary>
public sealed class DiagonalGaussianDistribution
{
    /// <summary>Splits <paramref name="parameters"/> [B, 2C, h, w] into mean and log-variance [B, C, h, w].</summary>
    public DiagonalGaussianDistribution(Tensor parameters)
    {
        var parts = parameters.chunk(2, 1);
        Mean = parts[0];
        LogVar = parts[1].clamp(-30.0, 20.0);
    }

    /// <summary>Posterior mean.</summary>
    public Tensor Mean { get; }

    /// <summary>Posterior log-variance, clamped to [-30, 20].</summary>
    public Tensor LogVar { get; }

    /// <summary>Posterior standard deviation exp(logvar / 2).</summary>
    public Tensor Std => LogVar.mul(0.5).exp();

    /// <summary>A draw mean + std * N(0, 1), the noise from <paramref name="generator"/> (diffusers' <c>sample(generator)</c>).</summary>
    public Tensor Sample(Generator? generator = null) =>
        Mean + Std * randn(Mean.shape, dtype: Mean.dtype, device: Mean.device, generator: generator);

    /// <summary>The mode (the mean).</summary>
    public Tensor Mode() => Mean;
}

/// <summary>diffusers <c>Encoder</c> (models/autoencoders/vae.py) with double_z: image to the posterior's moments.</summary>
internal sealed class Encoder : nn.Module<Tensor, Tensor>
{
    private readonly Conv2d conv_in;
    private readonly ModuleList<DownEncoderBlock2D> down_blocks = new();
    private readonly UNetMidBlock2D mid_block;
    private readonly FunctionalGroupNorm conv_norm_out;
    private readonly Conv2d conv_out;

    public Encoder(AutoencoderKLConfig c, Device? device) : base(nameof(Encoder))
    {
        var ch = c.BlockOutChannels;
        conv_in = nn.Conv2d(c.InChannels, ch[0], 3, padding: 1, device: device);
        for (int i = 0; i < ch.Length; i++)
            down_blocks.Add(new DownEncoderBlock2D(i == 0 ? ch[0] : ch[i - 1], ch[i], c.LayersPerBlock, i < ch.Length - 1, c.NormNumGroups, device));
        mid_block = new UNetMidBlock2D(ch[^1], c.NormNumGroups, device);
        conv_norm_out = new FunctionalGroupNorm(c.NormNumGroups, ch[^1], 1e-6, device: device);
        conv_out = nn.Conv2d(ch[^1], 2 * c.LatentChannels, 3, padding: 1, device: device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        x = conv_in.forward(x);
        foreach (var b in down_blocks) x = b.forward(x);
        x = mid_block.forward(x);
        return conv_out.forward(nn.functional.silu(conv_norm_out.forward(x))).MoveToOuterDisposeScope();
    }
}

/// <summary>diffusers <c>Decoder</c> (models/autoencoders/vae.py): latent to image.</summary>
internal sealed class Decoder : nn.Module<Tensor, Tensor>
{
    private readonly Conv2d conv_in;
    private readonly UNetMidBlock2D mid_block;
    private readonly ModuleList<UpDecoderBlock2D> up_blocks = new();
    private readonly FunctionalGroupNorm conv_norm_out;
    private readonly Conv2d conv_out;

    public Decoder(AutoencoderKLConfig c, Device? device) : base(nameof(Decoder))
    {
        var rev = c.BlockOutChannels.Reverse().ToArray();
        conv_in = nn.Conv2d(c.LatentChannels, rev[0], 3, padding: 1, device: device);
        mid_block = new UNetMidBlock2D(rev[0], c.NormNumGroups, device);
        for (int i = 0; i < rev.Length; i++)
            up_blocks.Add(new UpDecoderBlock2D(i == 0 ? rev[0] : rev[i - 1], rev[i], c.LayersPerBlock + 1, i < rev.Length - 1, c.NormNumGroups, device));
        conv_norm_out = new FunctionalGroupNorm(c.NormNumGroups, rev[^1], 1e-6, device: device);
        conv_out = nn.Conv2d(rev[^1], c.OutChannels, 3, padding: 1, device: device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor z)
    {
        using var scope = NewDisposeScope();
        z = conv_in.forward(z);
        z = mid_block.forward(z);
        foreach (var b in up_blocks) z = b.forward(z);
        return conv_out.forward(nn.functional.silu(conv_norm_out.forward(z))).MoveToOuterDisposeScope();
    }
}
