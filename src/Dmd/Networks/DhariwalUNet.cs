using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dmd.Networks;

/// <summary>
/// EDM's <c>DhariwalUNet</c>: the ADM architecture of Dhariwal and Nichol (guided-diffusion), as
/// re-implemented in NVlabs/edm <c>training/networks.py</c>, with the same module and parameter names
/// (<c>map_augment</c>, <c>map_layer0/1</c>, <c>map_label</c>, <c>enc.{r}x{r}_*</c>, <c>dec.{r}x{r}_*</c>,
/// <c>out_norm</c>, <c>out_conv</c>), so that converted EDM checkpoints load by name. EDM's ImageNet-64
/// model uses it; see <see cref="EdmUNetPresets"/>.
/// </summary>
/// <remarks>
/// Differences from <see cref="SongUNet"/> that matter for compatibility: no sin/cos swap of the
/// noise embedding; class labels are added after <c>map_layer1</c> (bias-free <c>map_label</c>, raw
/// one-hot input); blocks use adaptive scale/shift, unit skip scale and 64 channels per attention head.
/// </remarks>
public sealed class DhariwalUNet : EdmUNet
{
    private readonly PositionalEmbedding map_noise;
    private readonly EdmLinear? map_augment;
    private readonly EdmLinear map_layer0;
    private readonly EdmLinear map_layer1;
    private readonly EdmLinear? map_label;
    private readonly NamedModules enc;
    private readonly NamedModules dec;
    private readonly EdmGroupNorm out_norm;
    private readonly EdmConv2d out_conv;

    /// <summary>Builds the network; the defaults are those of EDM's <c>DhariwalUNet</c>.</summary>
    /// <param name="imgResolution">Image resolution at input and output.</param>
    /// <param name="inChannels">Colour channels at input.</param>
    /// <param name="outChannels">Colour channels at output.</param>
    /// <param name="labelDim">Number of class labels, 0 = unconditional.</param>
    /// <param name="augmentDim">Augmentation label dimensionality, 0 = no augmentation.</param>
    /// <param name="modelChannels">Base multiplier for the number of channels.</param>
    /// <param name="channelMult">Per-resolution multipliers for the number of channels (default [1,2,3,4]).</param>
    /// <param name="channelMultEmb">Multiplier for the dimensionality of the embedding vector.</param>
    /// <param name="numBlocks">Residual blocks per resolution.</param>
    /// <param name="attnResolutions">Resolutions with self-attention (default [32,16,8]).</param>
    /// <param name="dropout">Dropout probability of intermediate activations.</param>
    /// <param name="channelsPerHead">Channels per attention head (EDM fixes 64; smaller values let small
    /// networks keep their attention layers: a block with fewer channels than this has none).</param>
    public DhariwalUNet(
        int imgResolution,
        int inChannels,
        int outChannels,
        int labelDim = 0,
        int augmentDim = 0,
        int modelChannels = 192,
        int[]? channelMult = null,
        int channelMultEmb = 4,
        int numBlocks = 3,
        int[]? attnResolutions = null,
        double dropout = 0.10,
        int channelsPerHead = 64)
        : base(nameof(DhariwalUNet), imgResolution, inChannels, outChannels, labelDim, augmentDim,
            bottleneckChannels: modelChannels * (channelMult ?? DefaultChannelMult)[^1],
            bottleneckResolution: imgResolution >> ((channelMult ?? DefaultChannelMult).Length - 1))
    {
        channelMult ??= DefaultChannelMult;
        attnResolutions ??= new[] { 32, 16, 8 };
        int embChannels = modelChannels * channelMultEmb;
        var init = new EdmInit(InitMode.KaimingUniform, Weight: Math.Sqrt(1.0 / 3), Bias: Math.Sqrt(1.0 / 3));
        var initZero = new EdmInit(InitMode.KaimingUniform, Weight: 0, Bias: 0);
        var block = new UNetBlockOptions
        {
            EmbChannels = embChannels, ChannelsPerHead = channelsPerHead, Dropout = dropout, Init = init, InitZero = initZero,
        };

        // Mapping.
        map_noise = new PositionalEmbedding(modelChannels);
        map_augment = augmentDim > 0 ? new EdmLinear(augmentDim, modelChannels, bias: false, init: initZero) : null;
        map_layer0 = new EdmLinear(modelChannels, embChannels, init: init);
        map_layer1 = new EdmLinear(embChannels, embChannels, init: init);
        map_label = labelDim > 0
            ? new EdmLinear(labelDim, embChannels, bias: false, init: new EdmInit(InitMode.KaimingNormal, Weight: Math.Sqrt(labelDim)))
            : null;

        // Encoder.
        enc = new NamedModules();
        int cout = inChannels;
        var skips = new List<int>();
        for (int level = 0; level < channelMult.Length; level++)
        {
            int res = imgResolution >> level;
            if (level == 0)
            {
                int cin = cout;
                cout = modelChannels * channelMult[level];
                enc.Add($"{res}x{res}_conv", new EdmConv2d(cin, cout, 3, init: init));
            }
            else
            {
                enc.Add($"{res}x{res}_down", new UNetBlock(cout, cout, block, down: true));
            }
            skips.Add(cout);
            for (int idx = 0; idx < numBlocks; idx++)
            {
                int cin = cout;
                cout = modelChannels * channelMult[level];
                enc.Add($"{res}x{res}_block{idx}", new UNetBlock(cin, cout, block, attention: attnResolutions.Contains(res)));
                skips.Add(cout);
            }
        }

        // Decoder.
        dec = new NamedModules();
        for (int level = channelMult.Length - 1; level >= 0; level--)
        {
            int res = imgResolution >> level;
            if (level == channelMult.Length - 1)
            {
                dec.Add($"{res}x{res}_in0", new UNetBlock(cout, cout, block, attention: true));
                dec.Add($"{res}x{res}_in1", new UNetBlock(cout, cout, block));
            }
            else
            {
                dec.Add($"{res}x{res}_up", new UNetBlock(cout, cout, block, up: true));
            }
            for (int idx = 0; idx < numBlocks + 1; idx++)
            {
                int cin = cout + skips[^1];
                skips.RemoveAt(skips.Count - 1);
                cout = modelChannels * channelMult[level];
                dec.Add($"{res}x{res}_block{idx}", new UNetBlock(cin, cout, block, attention: attnResolutions.Contains(res)));
            }
        }
        out_norm = new EdmGroupNorm(cout);
        out_conv = new EdmConv2d(cout, outChannels, 3, init: initZero);
        RegisterComponents();
    }

    private static readonly int[] DefaultChannelMult = { 1, 2, 3, 4 };

    private protected override (Tensor? Output, Tensor Bottleneck) Run(Tensor x, Tensor cNoise, Tensor? labels, Tensor? augmentLabels, bool decode,
        Action<string, Tensor>? tap = null)
    {
        // Mapping.
        var emb = map_noise.forward(cNoise);
        if (map_augment is not null && augmentLabels is not null)
            emb = emb + map_augment.forward(augmentLabels);
        emb = nn.functional.silu(map_layer0.forward(emb));
        emb = map_layer1.forward(emb);
        if (map_label is not null && labels is not null)
            emb = emb + map_label.forward(labels);   // bias-free: null labels (all-zero rows) add nothing
        emb = nn.functional.silu(emb);

        // Encoder.
        var skips = new List<Tensor>();
        for (int i = 0; i < enc.Count; i++)
        {
            var module = enc[i].Item2;
            x = module is UNetBlock b ? b.forward(x, emb) : ((EdmConv2d)module).forward(x);
            skips.Add(x);
            tap?.Invoke("enc." + enc[i].Item1, x);
        }
        var bottleneck = x;
        if (!decode) return (null, bottleneck);

        // Decoder.
        for (int i = 0; i < dec.Count; i++)
        {
            var b = (UNetBlock)dec[i].Item2;
            if (x.shape[1] != b.InChannels)
            {
                x = cat(new[] { x, skips[^1] }, 1);
                skips.RemoveAt(skips.Count - 1);
            }
            x = b.forward(x, emb);
            tap?.Invoke("dec." + dec[i].Item1, x);
        }
        return (out_conv.forward(nn.functional.silu(out_norm.forward(x))), bottleneck);
    }
}
