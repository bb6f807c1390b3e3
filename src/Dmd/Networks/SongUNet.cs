using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dmd.Networks;

/// <summary>Noise embedding of <see cref="SongUNet"/>: positional (DDPM++) or random Fourier features (NCSN++).</summary>
public enum NoiseEmbeddingType
{
    /// <summary>Sinusoidal embedding with geometric frequencies (EDM's <c>PositionalEmbedding</c>): DDPM++.</summary>
    Positional,
    /// <summary>Random Fourier features, frequencies drawn once at scale 16 (EDM's <c>FourierEmbedding</c>): NCSN++.</summary>
    Fourier
}

/// <summary>Encoder of <see cref="SongUNet"/>: standard (DDPM++), skip, or residual (NCSN++).</summary>
public enum SongEncoderType
{
    /// <summary>Convolution and U-Net blocks only (DDPM++).</summary>
    Standard,
    /// <summary>At each lower resolution the down-sampled input image is added to the features through a 1x1 convolution.</summary>
    Skip,
    /// <summary>At each lower resolution a down-sampling 3x3 convolution of the previous level's sum (at first the input image) is added and the sum scaled by 1/sqrt(2) (NCSN++).</summary>
    Residual
}

/// <summary>Decoder of <see cref="SongUNet"/>: standard (DDPM++ and NCSN++) or skip.</summary>
public enum SongDecoderType
{
    /// <summary>One output head (GroupNorm, SiLU, 3x3 convolution) at the full resolution (DDPM++ and NCSN++).</summary>
    Standard,
    /// <summary>An output head at every resolution; the running output is up-sampled and added to the next head's.</summary>
    Skip
}

/// <summary>
/// EDM's <c>SongUNet</c>: the DDPM++ and NCSN++ architectures of Song et al. (score SDE), as
/// re-implemented in NVlabs/edm <c>training/networks.py</c>, with the same module and parameter names
/// (<c>map_noise</c>, <c>map_label</c>, <c>map_augment</c>, <c>map_layer0/1</c>, <c>enc.{r}x{r}_*</c>,
/// <c>dec.{r}x{r}_*</c>), so that converted EDM checkpoints load by name. EDM's CIFAR-10 models use it;
/// see <see cref="EdmUNetPresets"/>.
/// </summary>
/// <remarks>
/// As in EDM, the sin and cos halves of the noise embedding are swapped before the mapping network
/// (for both embedding types), and class labels enter as <c>map_label(labels * sqrt(label_dim))</c>.
/// The output is the sum of the decoder's <c>aux_conv</c> heads (only the top one for the standard decoder).
/// </remarks>
public sealed class SongUNet : EdmUNet
{
    private readonly nn.Module<Tensor, Tensor> map_noise;
    private readonly EdmLinear? map_label;
    private readonly EdmLinear? map_augment;
    private readonly EdmLinear map_layer0;
    private readonly EdmLinear map_layer1;
    private readonly NamedModules enc;
    private readonly NamedModules dec;

    /// <summary>Builds the network; the defaults are those of EDM's <c>SongUNet</c>.</summary>
    /// <param name="imgResolution">Image resolution at input and output.</param>
    /// <param name="inChannels">Colour channels at input.</param>
    /// <param name="outChannels">Colour channels at output.</param>
    /// <param name="labelDim">Number of class labels, 0 = unconditional.</param>
    /// <param name="augmentDim">Augmentation label dimensionality, 0 = no augmentation.</param>
    /// <param name="modelChannels">Base multiplier for the number of channels.</param>
    /// <param name="channelMult">Per-resolution multipliers for the number of channels (default [1,2,2,2]).</param>
    /// <param name="channelMultEmb">Multiplier for the dimensionality of the embedding vector.</param>
    /// <param name="numBlocks">Residual blocks per resolution.</param>
    /// <param name="attnResolutions">Resolutions with self-attention (default [16]).</param>
    /// <param name="dropout">Dropout probability of intermediate activations.</param>
    /// <param name="embeddingType">Positional for DDPM++, Fourier for NCSN++.</param>
    /// <param name="channelMultNoise">Noise embedding size multiplier: 1 for DDPM++, 2 for NCSN++.</param>
    /// <param name="encoderType">Standard for DDPM++, Residual for NCSN++.</param>
    /// <param name="decoderType">Standard for both DDPM++ and NCSN++.</param>
    /// <param name="resampleFilter">Resampling filter: [1,1] for DDPM++, [1,3,3,1] for NCSN++.</param>
    public SongUNet(
        int imgResolution,
        int inChannels,
        int outChannels,
        int labelDim = 0,
        int augmentDim = 0,
        int modelChannels = 128,
        int[]? channelMult = null,
        int channelMultEmb = 4,
        int numBlocks = 4,
        int[]? attnResolutions = null,
        double dropout = 0.10,
        NoiseEmbeddingType embeddingType = NoiseEmbeddingType.Positional,
        int channelMultNoise = 1,
        SongEncoderType encoderType = SongEncoderType.Standard,
        SongDecoderType decoderType = SongDecoderType.Standard,
        double[]? resampleFilter = null)
        : base(nameof(SongUNet), imgResolution, inChannels, outChannels, labelDim, augmentDim,
            bottleneckChannels: modelChannels * (channelMult ?? DefaultChannelMult)[^1],
            bottleneckResolution: imgResolution >> ((channelMult ?? DefaultChannelMult).Length - 1))
    {
        channelMult ??= DefaultChannelMult;
        attnResolutions ??= new[] { 16 };
        resampleFilter ??= new[] { 1.0, 1.0 };
        int embChannels = modelChannels * channelMultEmb;
        int noiseChannels = modelChannels * channelMultNoise;
        var init = new EdmInit(InitMode.XavierUniform);
        var initZero = new EdmInit(InitMode.XavierUniform, Weight: 1e-5);
        var initAttn = new EdmInit(InitMode.XavierUniform, Weight: Math.Sqrt(0.2));
        var block = new UNetBlockOptions
        {
            EmbChannels = embChannels, NumHeads = 1, Dropout = dropout, SkipScale = Math.Sqrt(0.5), Eps = 1e-6,
            ResampleFilter = resampleFilter, ResampleProj = true, AdaptiveScale = false,
            Init = init, InitZero = initZero, InitAttn = initAttn,
        };

        // Mapping.
        map_noise = embeddingType == NoiseEmbeddingType.Positional
            ? new PositionalEmbedding(noiseChannels, endpoint: true)
            : new FourierEmbedding(noiseChannels);
        map_label = labelDim > 0 ? new EdmLinear(labelDim, noiseChannels, init: init) : null;
        map_augment = augmentDim > 0 ? new EdmLinear(augmentDim, noiseChannels, bias: false, init: init) : null;
        map_layer0 = new EdmLinear(noiseChannels, embChannels, init: init);
        map_layer1 = new EdmLinear(embChannels, embChannels, init: init);

        // Encoder.
        enc = new NamedModules();
        int cout = inChannels, caux = inChannels;
        var skips = new List<int>();
        for (int level = 0; level < channelMult.Length; level++)
        {
            int res = imgResolution >> level;
            if (level == 0)
            {
                int cin = cout;
                cout = modelChannels;
                enc.Add($"{res}x{res}_conv", new EdmConv2d(cin, cout, 3, init: init));
                skips.Add(cout);
            }
            else
            {
                enc.Add($"{res}x{res}_down", new UNetBlock(cout, cout, block, down: true));
                skips.Add(cout);
                if (encoderType == SongEncoderType.Skip)
                {
                    enc.Add($"{res}x{res}_aux_down", new EdmConv2d(caux, caux, 0, down: true, resampleFilter: resampleFilter));
                    enc.Add($"{res}x{res}_aux_skip", new EdmConv2d(caux, cout, 1, init: init));
                }
                if (encoderType == SongEncoderType.Residual)
                {
                    enc.Add($"{res}x{res}_aux_residual", new EdmConv2d(caux, cout, 3, down: true, resampleFilter: resampleFilter,
                        fusedResample: true, init: init));
                    caux = cout;
                }
            }
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
                int cin = cout + Pop(skips);
                cout = modelChannels * channelMult[level];
                bool attn = idx == numBlocks && attnResolutions.Contains(res);
                dec.Add($"{res}x{res}_block{idx}", new UNetBlock(cin, cout, block, attention: attn));
            }
            if (decoderType == SongDecoderType.Skip || level == 0)
            {
                if (decoderType == SongDecoderType.Skip && level < channelMult.Length - 1)
                    dec.Add($"{res}x{res}_aux_up", new EdmConv2d(outChannels, outChannels, 0, up: true, resampleFilter: resampleFilter));
                dec.Add($"{res}x{res}_aux_norm", new EdmGroupNorm(cout, eps: 1e-6));
                dec.Add($"{res}x{res}_aux_conv", new EdmConv2d(cout, outChannels, 3, init: initZero));
            }
        }
        RegisterComponents();
    }

    private static readonly int[] DefaultChannelMult = { 1, 2, 2, 2 };

    private static int Pop(List<int> stack)
    {
        int last = stack[^1];
        stack.RemoveAt(stack.Count - 1);
        return last;
    }

    private protected override (Tensor? Output, Tensor Bottleneck) Run(Tensor x, Tensor cNoise, Tensor? labels, Tensor? augmentLabels, bool decode,
        Action<string, Tensor>? tap = null)
    {
        // Mapping.
        var emb = map_noise.forward(cNoise);
        long half = emb.shape[1] / 2; // swap sin/cos (EDM: reshape(-1, 2, C/2).flip(1)); libtorch's flip has no meta kernel
        emb = cat(new[] { emb.narrow(1, half, half), emb.narrow(1, 0, half) }, 1);
        if (map_label is not null)
        {
            var y = labels ?? zeros(x.shape[0], LabelDim, device: x.device);
            emb = emb + map_label.forward(y * Math.Sqrt(LabelDim));
        }
        if (map_augment is not null && augmentLabels is not null)
            emb = emb + map_augment.forward(augmentLabels);
        emb = nn.functional.silu(map_layer0.forward(emb));
        emb = nn.functional.silu(map_layer1.forward(emb));

        // Encoder.
        var skips = new List<Tensor>();
        var aux = x;
        for (int i = 0; i < enc.Count; i++)
        {
            var (name, module) = enc[i];
            if (name.Contains("aux_down"))
                aux = ((EdmConv2d)module).forward(aux);
            else if (name.Contains("aux_skip"))
                x = skips[^1] = x + ((EdmConv2d)module).forward(aux);
            else if (name.Contains("aux_residual"))
                x = skips[^1] = aux = (x + ((EdmConv2d)module).forward(aux)) / Math.Sqrt(2);
            else
            {
                x = module is UNetBlock b ? b.forward(x, emb) : ((EdmConv2d)module).forward(x);
                skips.Add(x);
            }
            tap?.Invoke("enc." + name, x);
        }
        var bottleneck = x;
        if (!decode) return (null, bottleneck);

        // Decoder.
        Tensor? output = null, tmp = null;
        for (int i = 0; i < dec.Count; i++)
        {
            var (name, module) = dec[i];
            if (name.Contains("aux_up"))
                output = ((EdmConv2d)module).forward(output!);
            else if (name.Contains("aux_norm"))
                tmp = ((EdmGroupNorm)module).forward(x);
            else if (name.Contains("aux_conv"))
            {
                tmp = ((EdmConv2d)module).forward(nn.functional.silu(tmp!));
                output = output is null ? tmp : tmp + output;
            }
            else
            {
                var b = (UNetBlock)module;
                if (x.shape[1] != b.InChannels)
                {
                    x = cat(new[] { x, skips[^1] }, 1);
                    skips.RemoveAt(skips.Count - 1);
                }
                x = b.forward(x, emb);
                tap?.Invoke("dec." + name, x);
            }
        }
        return (output, bottleneck);
    }
}
