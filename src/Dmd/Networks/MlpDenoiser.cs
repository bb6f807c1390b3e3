using Dmd.Diffusion;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dmd.Networks;

/// <summary>Sinusoidal embedding of the scalar noise condition c_noise = ln(sigma)/4 (geometric frequencies).</summary>
internal sealed class NoiseEmbedding : nn.Module<Tensor, Tensor>
{
    private readonly Tensor freqs;

    public NoiseEmbedding(int channels, double minFreq = 0.5, double maxFreq = 64.0) : base(nameof(NoiseEmbedding))
    {
        int half = channels / 2;
        freqs = torch.exp(torch.linspace(Math.Log(minFreq), Math.Log(maxFreq), half)).to(ScalarType.Float32);
        register_buffer("freqs", freqs);
    }

    public override Tensor forward(Tensor cNoise)
    {
        var x = cNoise.to(ScalarType.Float32).unsqueeze(1) * freqs.unsqueeze(0);
        return cat(new[] { x.cos(), x.sin() }, 1);
    }
}

/// <summary>Pre-activation residual block with an additive conditioning embedding.</summary>
internal sealed class MlpBlock : nn.Module<Tensor, Tensor, Tensor>
{
    private readonly LayerNorm norm;
    private readonly Linear fc0, fc1, affine;

    public MlpBlock(int width, int embDim) : base(nameof(MlpBlock))
    {
        norm = nn.LayerNorm(width);
        fc0 = nn.Linear(width, width);
        affine = nn.Linear(embDim, width);
        fc1 = nn.Linear(width, width);
        RegisterComponents();
    }

    public override Tensor forward(Tensor h, Tensor emb)
    {
        var y = fc0.forward(nn.functional.silu(norm.forward(h))) + affine.forward(emb);
        return h + fc1.forward(nn.functional.silu(y));
    }
}

/// <summary>
/// The raw network F for vector data (B, D): noise embedding, optional class embedding
/// (an all-zero one-hot row means "no label", which label dropout trains), residual MLP blocks.
/// </summary>
public sealed class MlpBackbone : EdmBackbone, IFeatureBackbone
{
    private readonly NoiseEmbedding map_noise;
    private readonly Linear map_layer0, map_layer1, input;
    private readonly Linear? map_label;
    private readonly ModuleList<MlpBlock> blocks;
    private readonly LayerNorm out_norm;
    private readonly Linear output;
    private readonly int labelDim;
    private readonly int width;

    /// <summary>Builds F for vectors of <paramref name="dim"/> values, freshly initialised.</summary>
    /// <param name="dim">Dimension D of a sample.</param>
    /// <param name="width">Hidden width of the residual blocks.</param>
    /// <param name="depth">Number of residual blocks.</param>
    /// <param name="labelDim">Number of classes (0 = unconditional).</param>
    /// <param name="embDim">Width of the noise and class embedding.</param>
    public MlpBackbone(int dim, int width = 256, int depth = 4, int labelDim = 0, int embDim = 128) : base(nameof(MlpBackbone))
    {
        this.labelDim = labelDim;
        this.width = width;
        map_noise = new NoiseEmbedding(embDim);
        map_label = labelDim > 0 ? nn.Linear(labelDim, embDim, hasBias: false) : null;
        map_layer0 = nn.Linear(embDim, embDim);
        map_layer1 = nn.Linear(embDim, embDim);
        input = nn.Linear(dim, width);
        blocks = nn.ModuleList(Enumerable.Range(0, depth).Select(_ => new MlpBlock(width, embDim)).ToArray());
        out_norm = nn.LayerNorm(width);
        output = nn.Linear(width, dim);
        RegisterComponents();
    }

    /// <inheritdoc/>
    public override int LabelDim => labelDim;

    /// <summary>F(x, c_noise, labels): x (B, D) already scaled by c_in, c_noise (B), one-hot labels (B, LabelDim) or null; returns (B, D).</summary>
    public override Tensor forward(Tensor x, Tensor cNoise, Tensor? labels) => output.forward(Features(x, cNoise, labels));

    /// <summary>The GAN head's features: the last hidden layer, (width).</summary>
    public long[] FeatureShape => new long[] { width };

    /// <summary>
    /// The last hidden layer: silu(out_norm(h)) after the residual blocks, (B, width), i.e. what the output layer reads
    /// (F = output(features)).
    /// </summary>
    public Tensor Features(Tensor x, Tensor cNoise, Tensor? labels)
    {
        var emb = map_noise.forward(cNoise);
        if (map_label is not null && labels is not null) emb = emb + map_label.forward(labels);
        emb = nn.functional.silu(map_layer1.forward(nn.functional.silu(map_layer0.forward(emb))));
        var h = input.forward(x);
        foreach (var b in blocks) h = b.forward(h, emb);
        return nn.functional.silu(out_norm.forward(h));
    }
}
