using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dmd.Networks;

/// <summary>
/// The fields of a diffusers <c>UNet2DConditionModel</c> config.json that <see cref="UNet2DConditionModel"/> implements.
/// The defaults are Stable Diffusion v1.5's (runwayml/stable-diffusion-v1-5 unet/config.json).
/// </summary>
public sealed record UNet2DConditionConfig
{
    /// <summary>Latent channels in (<c>in_channels</c>).</summary>
    public int InChannels { get; init; } = 4;
    /// <summary>Channels out, the predicted noise (<c>out_channels</c>).</summary>
    public int OutChannels { get; init; } = 4;
    /// <summary>Width of each resolution level (<c>block_out_channels</c>).</summary>
    public int[] BlockOutChannels { get; init; } = { 320, 640, 1280, 1280 };
    /// <summary><c>down_block_types</c>: CrossAttnDownBlock2D or DownBlock2D per level.</summary>
    public string[] DownBlockTypes { get; init; } = { "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D" };
    /// <summary><c>up_block_types</c>: UpBlock2D or CrossAttnUpBlock2D per level, deepest first.</summary>
    public string[] UpBlockTypes { get; init; } = { "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D" };
    /// <summary>Resnets per down block (the up blocks have one more) (<c>layers_per_block</c>).</summary>
    public int LayersPerBlock { get; init; } = 2;
    /// <summary>
    /// Attention heads per level, from <c>num_attention_heads</c> or else <c>attention_head_dim</c>: diffusers reads SD v1.5's
    /// <c>attention_head_dim: 8</c> as 8 heads (the field was misnamed when the library was written), so each head has
    /// width / 8 channels.
    /// </summary>
    public int[] AttentionHeads { get; init; } = { 8, 8, 8, 8 };
    /// <summary>Channels of the text encoder's hidden states (<c>cross_attention_dim</c>).</summary>
    public int CrossAttentionDim { get; init; } = 768;
    /// <summary>GroupNorm groups (<c>norm_num_groups</c>).</summary>
    public int NormNumGroups { get; init; } = 32;
    /// <summary>Epsilon of the resnets' and output GroupNorms (<c>norm_eps</c>).</summary>
    public double NormEps { get; init; } = 1e-5;
    /// <summary>Timestep embedding as [cos, sin] instead of [sin, cos] (<c>flip_sin_to_cos</c>).</summary>
    public bool FlipSinToCos { get; init; } = true;
    /// <summary>Frequency shift of the timestep embedding (<c>freq_shift</c>).</summary>
    public double FreqShift { get; init; } = 0;
    /// <summary>Padding of the down blocks' stride-2 convolutions (<c>downsample_padding</c>).</summary>
    public int DownsamplePadding { get; init; } = 1;
    /// <summary>Latent resolution the model was trained at (<c>sample_size</c>; informative, any size divisible by 8 runs).</summary>
    public int SampleSize { get; init; } = 64;

    /// <summary>
    /// Reads a diffusers <c>config.json</c> (or the folder holding it). A field set to something this implementation does not
    /// build (another block type, linear projections, class embeddings, ...) is a one-line <see cref="DmdInputException"/> naming it.
    /// </summary>
    public static UNet2DConditionConfig Load(string folderOrFile)
    {
        var c = DiffusersConfig.Read(folderOrFile, nameof(UNet2DConditionModel));
        var d = new UNet2DConditionConfig();
        c.Refuse("act_fn", "silu");
        c.Refuse("center_input_sample", false);
        c.Refuse("mid_block_type", "UNetMidBlock2DCrossAttn");
        c.Refuse("only_cross_attention", false);
        c.Refuse("dual_cross_attention", false);
        c.Refuse("use_linear_projection", false);
        c.Refuse("upcast_attention", false);
        c.Refuse("class_embed_type", null);
        c.Refuse("addition_embed_type", null);
        c.Refuse("num_class_embeds", null);
        c.Refuse("encoder_hid_dim", null);
        c.Refuse("encoder_hid_dim_type", null);
        c.Refuse("time_embedding_type", "positional");
        c.Refuse("time_embedding_dim", null);
        c.Refuse("time_embedding_act_fn", null);
        c.Refuse("timestep_post_act", null);
        c.Refuse("time_cond_proj_dim", null);
        c.Refuse("resnet_time_scale_shift", "default");
        c.Refuse("resnet_skip_time_act", false);
        c.Refuse("resnet_out_scale_factor", 1.0);
        c.Refuse("mid_block_scale_factor", 1.0);
        c.Refuse("conv_in_kernel", 3);
        c.Refuse("conv_out_kernel", 3);
        c.Refuse("transformer_layers_per_block", 1);
        c.Refuse("reverse_transformer_layers_per_block", null);
        c.Refuse("attention_type", "default");
        c.Refuse("cross_attention_norm", null);
        c.Refuse("mid_block_only_cross_attention", null);
        c.Refuse("class_embeddings_concat", false);
        c.Refuse("dropout", 0.0);
        if (c.Has("layers_per_block") && c.Ints("layers_per_block", new[] { 0 }).Length != 1)
            throw c.Unsupported("layers_per_block", "a list", "one integer for every block");
        if (c.Has("cross_attention_dim") && c.Ints("cross_attention_dim", new[] { 0 }).Length != 1)
            throw c.Unsupported("cross_attention_dim", "a list", "one integer for every block");

        var blocks = c.Ints("block_out_channels", d.BlockOutChannels);
        int n = blocks.Length;
        var heads = c.Has("num_attention_heads") ? c.Ints("num_attention_heads", d.AttentionHeads, n) : c.Ints("attention_head_dim", d.AttentionHeads, n);
        var cfg = new UNet2DConditionConfig
        {
            InChannels = c.Int("in_channels", d.InChannels),
            OutChannels = c.Int("out_channels", d.OutChannels),
            BlockOutChannels = blocks,
            DownBlockTypes = c.Strings("down_block_types", d.DownBlockTypes),
            UpBlockTypes = c.Strings("up_block_types", d.UpBlockTypes),
            LayersPerBlock = c.Int("layers_per_block", d.LayersPerBlock),
            AttentionHeads = heads,
            CrossAttentionDim = c.Int("cross_attention_dim", d.CrossAttentionDim),
            NormNumGroups = c.Int("norm_num_groups", d.NormNumGroups),
            NormEps = c.Double("norm_eps", d.NormEps),
            FlipSinToCos = c.Bool("flip_sin_to_cos", d.FlipSinToCos),
            FreqShift = c.Double("freq_shift", d.FreqShift),
            DownsamplePadding = c.Int("downsample_padding", d.DownsamplePadding),
            SampleSize = c.Int("sample_size", d.SampleSize),
        };
        cfg.Validate(c.Path);
        return cfg;
    }

    /// <summary>Checks the fields agree with each other and with the block types implemented; <paramref name="source"/> names the file in the error.</summary>
    internal void Validate(string source)
    {
        int n = BlockOutChannels.Length;
        string? problem =
            n == 0 ? "block_out_channels is empty"
            : DownBlockTypes.Length != n ? $"down_block_types has {DownBlockTypes.Length} entries for {n} block_out_channels"
            : UpBlockTypes.Length != n ? $"up_block_types has {UpBlockTypes.Length} entries for {n} block_out_channels"
            : AttentionHeads.Length != n ? $"attention_head_dim / num_attention_heads has {AttentionHeads.Length} entries for {n} block_out_channels"
            : DownBlockTypes.FirstOrDefault(t => t is not ("CrossAttnDownBlock2D" or "DownBlock2D")) is string dt
                ? $"down_block_types entry {dt} is not implemented (it implements CrossAttnDownBlock2D, DownBlock2D)"
            : UpBlockTypes.FirstOrDefault(t => t is not ("CrossAttnUpBlock2D" or "UpBlock2D")) is string ut
                ? $"up_block_types entry {ut} is not implemented (it implements CrossAttnUpBlock2D, UpBlock2D)"
            : BlockOutChannels.FirstOrDefault(ch => ch <= 0 || ch % NormNumGroups != 0) is int bad and not 0
                ? $"block_out_channels entry {bad} is not a multiple of norm_num_groups {NormNumGroups}"
            : Enumerable.Range(0, n).FirstOrDefault(i => AttentionHeads[i] <= 0 || BlockOutChannels[i] % AttentionHeads[i] != 0, -1) is int h and >= 0
                ? $"block_out_channels entry {BlockOutChannels[h]} is not divisible into {AttentionHeads[h]} attention heads (attention_head_dim)"
            : LayersPerBlock < 1 ? $"layers_per_block {LayersPerBlock} is not positive"
            : null;
        if (problem is not null) throw new DmdInputException($"{source}: {problem}");
    }
}

/// <summary>
/// diffusers' <c>UNet2DConditionModel</c> as Stable Diffusion v1.5 configures it, with diffusers' parameter names, so that
/// a diffusers <c>unet/</c> folder loads by name (<see cref="FromPretrained"/>): <c>conv_in</c>, the sinusoidal timestep
/// embedding (<c>time_proj</c>, no parameters) and its MLP (<c>time_embedding.linear_1/2</c>), <c>down_blocks</c>
/// (CrossAttnDownBlock2D / DownBlock2D), <c>mid_block</c> (UNetMidBlock2DCrossAttn), <c>up_blocks</c> (UpBlock2D /
/// CrossAttnUpBlock2D), <c>conv_norm_out</c>, <c>conv_out</c>. The forward pass predicts the noise eps of a latent.
/// </summary>
public sealed class UNet2DConditionModel : nn.Module<Tensor, Tensor, Tensor, Tensor>
{
    private readonly Conv2d conv_in;
    private readonly Timesteps time_proj;
    private readonly TimestepEmbedding time_embedding;
    private readonly ModuleList<UNetDownBlock> down_blocks = new();
    private readonly UNetMidBlock2DCrossAttn mid_block;
    private readonly ModuleList<UNetUpBlock> up_blocks = new();
    private readonly FunctionalGroupNorm conv_norm_out;
    private readonly Conv2d conv_out;

    /// <summary>Builds the network (weights as diffusers/PyTorch initialise them) from <paramref name="config"/> (default: SD v1.5).</summary>
    /// <param name="config">The architecture; null is SD v1.5's.</param>
    /// <param name="device">Where to allocate the parameters: null for the CPU, <c>torch.META</c> to build the shapes without memory.</param>
    public UNet2DConditionModel(UNet2DConditionConfig? config = null, Device? device = null) : base(nameof(UNet2DConditionModel))
    {
        Config = config ??= new UNet2DConditionConfig();
        config.Validate(nameof(UNet2DConditionConfig));
        var ch = config.BlockOutChannels;
        int n = ch.Length;
        long tembChannels = ch[0] * 4L;
        var shape = new UNetBlockShape(tembChannels, config.NormNumGroups, config.NormEps, config.CrossAttentionDim, device);

        conv_in = nn.Conv2d(config.InChannels, ch[0], 3, padding: 1, device: device);
        time_proj = new Timesteps(ch[0], config.FlipSinToCos, config.FreqShift);
        time_embedding = new TimestepEmbedding(ch[0], tembChannels, device);

        long outCh = ch[0];
        for (int i = 0; i < n; i++)
        {
            long inCh = outCh;
            outCh = ch[i];
            bool last = i == n - 1;
            down_blocks.Add(config.DownBlockTypes[i] == "CrossAttnDownBlock2D"
                ? new CrossAttnDownBlock2D(inCh, outCh, config.LayersPerBlock, config.AttentionHeads[i], !last, config.DownsamplePadding, shape)
                : new DownBlock2D(inCh, outCh, config.LayersPerBlock, !last, config.DownsamplePadding, shape));
        }

        mid_block = new UNetMidBlock2DCrossAttn(ch[^1], config.AttentionHeads[^1], shape);

        var rev = ch.Reverse().ToArray();
        var revHeads = config.AttentionHeads.Reverse().ToArray();
        outCh = rev[0];
        for (int i = 0; i < n; i++)
        {
            long prevOut = outCh;
            outCh = rev[i];
            long inCh = rev[Math.Min(i + 1, n - 1)];
            bool last = i == n - 1;
            up_blocks.Add(config.UpBlockTypes[i] == "CrossAttnUpBlock2D"
                ? new CrossAttnUpBlock2D(inCh, outCh, prevOut, config.LayersPerBlock + 1, revHeads[i], !last, shape)
                : new UpBlock2D(inCh, outCh, prevOut, config.LayersPerBlock + 1, !last, shape));
        }

        conv_norm_out = new FunctionalGroupNorm(config.NormNumGroups, ch[0], config.NormEps, device: device);
        conv_out = nn.Conv2d(ch[0], config.OutChannels, 3, padding: 1, device: device);
        RegisterComponents();
    }

    /// <summary>The architecture this network was built from.</summary>
    public UNet2DConditionConfig Config { get; }

    /// <summary>
    /// Loads a diffusers <c>unet/</c> folder: <c>config.json</c> (<see cref="UNet2DConditionConfig.Load"/>) and
    /// <c>diffusion_pytorch_model.safetensors</c> by name (float16 files are widened to float32). A missing, unexpected or
    /// mis-shaped tensor is one <see cref="DmdInputException"/> naming it. Returned in eval mode.
    /// </summary>
    public static UNet2DConditionModel FromPretrained(string folder)
    {
        var net = new UNet2DConditionModel(UNet2DConditionConfig.Load(folder));
        DiffusersConfig.LoadWeights(net, folder);
        net.eval();
        return net;
    }

    /// <summary>
    /// Writes a diffusers <c>unet/</c> folder that <see cref="FromPretrained"/> and diffusers' <c>UNet2DConditionModel.from_pretrained</c>
    /// read: <c>config.json</c> (every field this implementation builds, the others at the values it requires) and the
    /// weights as <c>diffusion_pytorch_model.safetensors</c> under diffusers' names.
    /// </summary>
    public void SavePretrained(string folder)
    {
        Directory.CreateDirectory(folder);
        IO.Checkpoint.SaveModule(this, Path.Combine(folder, DiffusersConfig.WeightsName));
        var u = Config;
        System.Text.Json.Nodes.JsonArray Arr<T>(IEnumerable<T> v) => new(v.Select(x => System.Text.Json.Nodes.JsonValue.Create(x)).ToArray<System.Text.Json.Nodes.JsonNode?>());
        var json = new System.Text.Json.Nodes.JsonObject
        {
            ["_class_name"] = nameof(UNet2DConditionModel), ["_diffusers_version"] = "0.27.2", ["act_fn"] = "silu",
            ["attention_head_dim"] = Arr(u.AttentionHeads), ["block_out_channels"] = Arr(u.BlockOutChannels), ["center_input_sample"] = false,
            ["cross_attention_dim"] = u.CrossAttentionDim, ["down_block_types"] = Arr(u.DownBlockTypes), ["downsample_padding"] = u.DownsamplePadding,
            ["dropout"] = 0.0, ["flip_sin_to_cos"] = u.FlipSinToCos, ["freq_shift"] = u.FreqShift, ["in_channels"] = u.InChannels,
            ["layers_per_block"] = u.LayersPerBlock, ["mid_block_scale_factor"] = 1, ["mid_block_type"] = "UNetMidBlock2DCrossAttn",
            ["norm_eps"] = u.NormEps, ["norm_num_groups"] = u.NormNumGroups, ["out_channels"] = u.OutChannels, ["sample_size"] = u.SampleSize,
            ["up_block_types"] = Arr(u.UpBlockTypes), ["upcast_attention"] = false, ["use_linear_projection"] = false,
        };
        IO.Checkpoint.SaveJson(json, Path.Combine(folder, "config.json"));
    }

    /// <summary>
    /// The predicted noise eps [B, out_channels, H, W] of <paramref name="sample"/> [B, in_channels, H, W] at diffusion
    /// step <paramref name="timestep"/> ([B] or a scalar, on the 0..999 DDPM scale), conditioned on the text encoder's
    /// <paramref name="encoderHiddenStates"/> [B, tokens, cross_attention_dim].
    /// </summary>
    public override Tensor forward(Tensor sample, Tensor timestep, Tensor encoderHiddenStates)
    {
        long b = sample.shape[0];
        if (sample.dim() != 4 || sample.shape[1] != Config.InChannels)
            throw new ArgumentException($"sample must be [B, {Config.InChannels}, H, W], got [{string.Join(", ", sample.shape)}]");
        if (encoderHiddenStates.dim() != 3 || encoderHiddenStates.shape[0] != b || encoderHiddenStates.shape[2] != Config.CrossAttentionDim)
            throw new ArgumentException($"encoder_hidden_states must be [{b}, tokens, {Config.CrossAttentionDim}], got [{string.Join(", ", encoderHiddenStates.shape)}]");
        using var scope = NewDisposeScope();   // frees the skips and the embedding on return
        var (h, emb, skips) = Encode(sample, timestep, encoderHiddenStates);
        for (int i = 0; i < up_blocks.Count; i++)
        {
            // the next skip's size after this block's skips are consumed: 2x, or the odd size the downsampler rounded
            int consumed = Config.LayersPerBlock + 1;
            long[]? size = i < up_blocks.Count - 1 ? skips[^(consumed + 1)].shape[2..] : null;
            h = up_blocks[i].Forward(h, skips, emb, encoderHiddenStates, size);
        }
        return conv_out.forward(nn.functional.silu(conv_norm_out.forward(h))).MoveToOuterDisposeScope();
    }

    /// <summary>The time embedding, the down blocks and the mid block: the mid block's output, the embedding and the skips.</summary>
    private (Tensor H, Tensor Emb, List<Tensor> Skips) Encode(Tensor sample, Tensor timestep, Tensor encoderHiddenStates)
    {
        var t = timestep.dim() == 0 ? timestep.reshape(1) : timestep;
        t = t.expand(sample.shape[0]);
        var emb = time_embedding.forward(time_proj.forward(t).to(sample.dtype));
        var h = conv_in.forward(sample);
        var skips = new List<Tensor> { h };
        foreach (var block in down_blocks) h = block.Forward(h, emb, encoderHiddenStates, skips);
        h = mid_block.forward(h, emb, encoderHiddenStates);
        return (h, emb, skips);
    }

    /// <summary>
    /// The mid block's output [B, block_out_channels[-1], H/2^(n-1), W/2^(n-1)] (the bottleneck that DMD2's Stable
    /// Diffusion code gives its GAN classifier), for the same inputs as <see cref="forward"/>; the up blocks are not run.
    /// </summary>
    public Tensor Bottleneck(Tensor sample, Tensor timestep, Tensor encoderHiddenStates)
    {
        using var scope = NewDisposeScope();
        return Encode(sample, timestep, encoderHiddenStates).H.MoveToOuterDisposeScope();
    }

    /// <summary>The shape of one sample's <see cref="Bottleneck"/> for latents of <paramref name="height"/> x <paramref name="width"/>.</summary>
    public long[] BottleneckShape(int height, int width)
    {
        int n = Config.BlockOutChannels.Length;
        long Down(long size) { for (int i = 0; i < n - 1; i++) size = (size + 1) / 2; return size; } // stride-2 convs, padding 1
        return new[] { (long)Config.BlockOutChannels[^1], Down(height), Down(width) };
    }
}

/// <summary>
/// diffusers <c>Timesteps</c> / <c>get_timestep_embedding</c>: [sin(t f_i), cos(t f_i)] with f_i =
/// exp(-ln(10000) i / (half - freq_shift)), i &lt; half = dim / 2, swapped to [cos, sin] by flip_sin_to_cos. No parameters.
/// </summary>
internal sealed class Timesteps : nn.Module<Tensor, Tensor>
{
    private readonly long dim;
    private readonly bool flipSinToCos;
    private readonly double freqShift;

    public Timesteps(long dim, bool flipSinToCos, double freqShift) : base(nameof(Timesteps))
    {
        this.dim = dim;
        this.flipSinToCos = flipSinToCos;
        this.freqShift = freqShift;
        RegisterComponents();
    }

    public override Tensor forward(Tensor t)
    {
        long half = dim / 2;
        var exponent = arange(0, half, dtype: ScalarType.Float32, device: t.device).mul_(-Math.Log(10000)).div_(half - freqShift);
        var args = t.unsqueeze(1).to(ScalarType.Float32) * exponent.exp().unsqueeze(0);
        var emb = flipSinToCos ? cat(new[] { args.cos(), args.sin() }, -1) : cat(new[] { args.sin(), args.cos() }, -1);
        return dim % 2 == 1 ? nn.functional.pad(emb, new long[] { 0, 1, 0, 0 }) : emb;
    }
}

/// <summary>diffusers <c>TimestepEmbedding</c>: <c>linear_1</c>, SiLU, <c>linear_2</c>.</summary>
internal sealed class TimestepEmbedding : nn.Module<Tensor, Tensor>
{
    private readonly Linear linear_1;
    private readonly Linear linear_2;

    public TimestepEmbedding(long inChannels, long timeEmbedDim, Device? device = null) : base(nameof(TimestepEmbedding))
    {
        linear_1 = nn.Linear(inChannels, timeEmbedDim, device: device);
        linear_2 = nn.Linear(timeEmbedDim, timeEmbedDim, device: device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => linear_2.forward(nn.functional.silu(linear_1.forward(x)));
}
