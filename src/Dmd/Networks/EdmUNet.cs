using Dmd.Diffusion;
using static TorchSharp.torch;

namespace Dmd.Networks;

/// <summary>
/// What the two EDM U-Nets (<see cref="SongUNet"/>, <see cref="DhariwalUNet"/>) have in common:
/// image in, image out, optional augmentation labels, and access to the bottleneck features.
/// </summary>
/// <remarks>
/// The <em>bottleneck</em> is the output of the encoder's last block (e.g. <c>enc.8x8_block3</c> of
/// DDPM++ or <c>enc.8x8_block2</c> of ADM), i.e. the input of the first decoder block
/// <c>dec.{r}x{r}_in0</c>: shape (B, <see cref="BottleneckChannels"/>, r, r) with
/// r = <see cref="BottleneckResolution"/>. This is the tensor DMD2's GAN classifier head reads
/// (its <c>return_bottleneck</c> returns right after the encoder).
/// </remarks>
public abstract class EdmUNet : EdmBackbone, IFeatureBackbone, ILevelFeatureBackbone
{
    /// <summary>Records the geometry the U-Nets share (the properties of the same names); the subclass builds the layers.</summary>
    protected EdmUNet(string name, int imgResolution, int inChannels, int outChannels, int labelDim, int augmentDim,
        int bottleneckChannels, int bottleneckResolution) : base(name)
    {
        ImgResolution = imgResolution;
        InChannels = inChannels;
        OutChannels = outChannels;
        LabelDim = labelDim;
        AugmentDim = augmentDim;
        BottleneckChannels = bottleneckChannels;
        BottleneckResolution = bottleneckResolution;
    }

    /// <summary>Side of the square input and output images.</summary>
    public int ImgResolution { get; }

    /// <summary>Channels of the input image.</summary>
    public int InChannels { get; }

    /// <summary>Channels of the output image.</summary>
    public int OutChannels { get; }

    /// <inheritdoc/>
    public override int LabelDim { get; }

    /// <summary>Width of the augmentation labels (EDM's augment pipe: 9; 0 = none).</summary>
    public int AugmentDim { get; }

    /// <summary>Channels of the bottleneck features.</summary>
    public int BottleneckChannels { get; }

    /// <summary>Side of the bottleneck feature map.</summary>
    public int BottleneckResolution { get; }

    /// <summary>F(x, c_noise, labels) without augmentation labels.</summary>
    public override Tensor forward(Tensor x, Tensor cNoise, Tensor? labels) => forward(x, cNoise, labels, null);

    /// <summary>
    /// F(x, c_noise, labels, augment_labels).
    /// </summary>
    /// <param name="x">Input images (B, InChannels, R, R), already scaled by c_in.</param>
    /// <param name="cNoise">Noise condition (B,).</param>
    /// <param name="labels">One-hot class labels (B, LabelDim); null = all-zero rows. Ignored if unconditional.</param>
    /// <param name="augmentLabels">Augmentation labels (B, AugmentDim); null = zeros (no augmentation).</param>
    public Tensor forward(Tensor x, Tensor cNoise, Tensor? labels, Tensor? augmentLabels)
    {
        using var scope = NewDisposeScope();
        var (output, _) = Run(x, cNoise, labels, augmentLabels, decode: true);
        return output!.MoveToOuterDisposeScope();
    }

    /// <summary>The network output together with the bottleneck features (see the class remarks).</summary>
    public (Tensor Output, Tensor Bottleneck) ForwardWithBottleneck(Tensor x, Tensor cNoise, Tensor? labels, Tensor? augmentLabels = null)
    {
        using var scope = NewDisposeScope();
        var (output, bottleneck) = Run(x, cNoise, labels, augmentLabels, decode: true);
        return (output!.MoveToOuterDisposeScope(), bottleneck.MoveToOuterDisposeScope());
    }

    /// <summary>The bottleneck features only: runs the mapping network and the encoder, skips the decoder.</summary>
    public Tensor Bottleneck(Tensor x, Tensor cNoise, Tensor? labels, Tensor? augmentLabels = null)
    {
        using var scope = NewDisposeScope();
        var (_, bottleneck) = Run(x, cNoise, labels, augmentLabels, decode: false);
        return bottleneck.MoveToOuterDisposeScope();
    }

    /// <summary>The GAN head's features: the bottleneck, (C, r, r) = (<see cref="BottleneckChannels"/>, <see cref="BottleneckResolution"/>, <see cref="BottleneckResolution"/>).</summary>
    public long[] FeatureShape => new long[] { BottleneckChannels, BottleneckResolution, BottleneckResolution };

    /// <summary>The GAN head's features: <see cref="Bottleneck"/> without augmentation labels.</summary>
    public Tensor Features(Tensor x, Tensor cNoise, Tensor? labels) => Bottleneck(x, cNoise, labels);

    /// <summary>
    /// Features at every resolution of both halves of the network, for a discriminator that reads more than the
    /// bottleneck (<see cref="MultiLevelGanClassifier"/>): the output of the encoder's last module at each resolution
    /// (from the input's side down to the bottleneck, which is the last of them), then the output of the decoder's last
    /// block at each resolution (from the bottleneck's side up to the input's), each (B, C_l, r_l, r_l), at the inputs
    /// of <c>forward</c> without augmentation labels. For DDPM++ on 32x32 with channel_mult (1, 2, 2): 32x32, 16x16, 8x8
    /// of the encoder, 8x8, 16x16, 32x32 of the decoder.
    /// </summary>
    public Tensor[] LevelFeatures(Tensor x, Tensor cNoise, Tensor? labels)
    {
        using var scope = NewDisposeScope();
        var enc = new List<(string Res, Tensor X)>();
        var dec = new List<(string Res, Tensor X)>();
        void Tap(string name, Tensor t)
        {
            var parts = name.Split('.', 2);
            var list = parts[0] == "enc" ? enc : dec;
            var res = parts[1][..parts[1].IndexOf('_')];
            if (list.Count > 0 && list[^1].Res == res) list[^1] = (res, t);
            else list.Add((res, t));
        }
        Run(x, cNoise, labels, null, decode: true, Tap);
        return enc.Concat(dec).Select(e => e.X.MoveToOuterDisposeScope()).ToArray();
    }

    /// <summary>The shapes (C_l, r_l, r_l) of one sample's <see cref="LevelFeatures"/>, found by one pass of a zero image.</summary>
    public long[][] LevelFeatureShapes()
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var device = parameters().FirstOrDefault()?.device ?? CPU;
        var x = zeros(new long[] { 1, InChannels, ImgResolution, ImgResolution }, device: device);
        var labels = LabelDim > 0 ? zeros(1, LabelDim, device: device) : null;
        return LevelFeatures(x, zeros(1, device: device), labels).Select(t => t.shape[1..]).ToArray();
    }

    /// <summary>
    /// Mapping network and encoder, then the decoder where <paramref name="decode"/> is set; <paramref name="tap"/>, when
    /// given, sees each module's output under its name (<c>enc.{r}x{r}_...</c>, <c>dec.{r}x{r}_...</c>), in order.
    /// </summary>
    private protected abstract (Tensor? Output, Tensor Bottleneck) Run(Tensor x, Tensor cNoise, Tensor? labels, Tensor? augmentLabels, bool decode,
        Action<string, Tensor>? tap = null);
}
