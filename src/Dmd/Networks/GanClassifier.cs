using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dmd.Networks;

/// <summary>
/// DMD2's GAN classifier head (<c>cls_pred_branch</c> in main/edm/edm_guidance.py): one realism logit per sample from the
/// fake denoiser's features (<see cref="Diffusion.EdmPrecond.Features"/>).
/// <list type="bullet">
/// <item>U-Net bottleneck (C, r, r): while r &gt; 4, a 4x4 convolution of stride 2 (r -> r/2), GroupNorm, SiLU; then a
/// convolution whose kernel and stride are the remaining side (-> 1x1), GroupNorm, SiLU; then a 1x1 convolution to one
/// channel. For DMD2's 8x8 bottleneck this is exactly its head: conv4 s2 p1, GN, SiLU, conv4 s4, GN, SiLU, conv1.</item>
/// <item>MLP features (W): the same head on a 1x1 map, i.e. an MLP: Linear(W, W), GroupNorm, SiLU, Linear(W, 1).</item>
/// </list>
/// Channels stay C throughout, as in DMD2; GroupNorm uses EDM's min(32, C/4) groups (DMD2: 32 groups of 768 channels).
/// Layers are PyTorch-initialised (<c>nn.Conv2d</c>, <c>nn.Linear</c> defaults); the weights are named as in DMD2's guidance
/// model (<c>cls_pred_branch.0.weight</c>, ...).
/// </summary>
public sealed class GanClassifier : nn.Module<Tensor, Tensor>
{
    private readonly Sequential cls_pred_branch;

    /// <summary>A head for features of one sample's shape <paramref name="featureShape"/>: (C, r, r) or (W).</summary>
    public GanClassifier(long[] featureShape) : base(nameof(GanClassifier))
    {
        FeatureShape = featureShape.ToArray();
        var seq = new List<(string, nn.Module<Tensor, Tensor>)>();
        void Add(nn.Module<Tensor, Tensor> m) => seq.Add((seq.Count.ToString(), m));
        if (featureShape.Length == 3 && featureShape[1] == featureShape[2])
        {
            long c = featureShape[0], side = featureShape[1];
            while (side > 4)
            {
                Add(nn.Conv2d(c, c, kernel_size: 4, stride: 2, padding: 1)); // r -> r/2 (DMD2: 8x8 -> 4x4)
                Add(new EdmGroupNorm(c));
                Add(nn.SiLU());
                side /= 2;
            }
            Add(nn.Conv2d(c, c, kernel_size: side, stride: side));          // r -> 1 (DMD2: 4x4 -> 1x1)
            Add(new EdmGroupNorm(c));
            Add(nn.SiLU());
            Add(nn.Conv2d(c, 1, kernel_size: 1));                            // one logit
        }
        else if (featureShape.Length == 1)
        {
            long w = featureShape[0];
            Add(nn.Linear(w, w));
            Add(new EdmGroupNorm(w));
            Add(nn.SiLU());
            Add(nn.Linear(w, 1));
        }
        else throw new DmdInputException($"a GAN head takes features of shape (C, r, r) or (W), not [{string.Join(",", featureShape)}]");
        cls_pred_branch = nn.Sequential(seq);
        RegisterComponents();
    }

    /// <summary>Shape of one sample's features the head reads.</summary>
    public long[] FeatureShape { get; }

    /// <summary>Logits (B) for features (B, ...<see cref="FeatureShape"/>): positive = judged real.</summary>
    public override Tensor forward(Tensor features) => cls_pred_branch.forward(features.to(ScalarType.Float32)).reshape(features.shape[0]);
}

/// <summary>
/// Not in DMD2: a discriminator that reads the fake denoiser's features at every resolution of its U-Net
/// (<see cref="EdmUNet.LevelFeatures"/>) instead of the bottleneck alone, one <see cref="GanClassifier"/> head per level
/// (as LADD puts heads on several levels of its feature network), whose logits add up to one logit per sample.
/// </summary>
public sealed class MultiLevelGanClassifier : nn.Module<Tensor[], Tensor>
{
    private readonly ModuleList<GanClassifier> heads;

    /// <summary>One head for each level's per-sample feature shape (C, r, r).</summary>
    public MultiLevelGanClassifier(IEnumerable<long[]> levelShapes) : base(nameof(MultiLevelGanClassifier))
    {
        heads = new ModuleList<GanClassifier>(levelShapes.Select(s => new GanClassifier(s)).ToArray());
        RegisterComponents();
    }

    /// <summary>The sum of the heads' logits (B) for the levels' features (each (B, C_l, r_l, r_l)); positive = judged real.</summary>
    public override Tensor forward(Tensor[] levels)
    {
        using var scope = NewDisposeScope();
        return HeadLogits(levels).Aggregate((a, b) => a + b).MoveToOuterDisposeScope();
    }

    /// <summary>Each head's logits (B) on its own level.</summary>
    public Tensor[] HeadLogits(Tensor[] levels)
    {
        if (levels.Length != heads.Count)
            throw new ArgumentException($"{levels.Length} feature levels for {heads.Count} heads");
        return heads.Select((h, i) => h.forward(levels[i])).ToArray();
    }
}
