using Dmd.Diffusion;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Distillation;

/// <summary>
/// What a generator is conditioned on and how a distillation draws it: class labels (one-hot rows, the EDM teachers) or
/// text prompts (their encoder's contexts, a Stable-Diffusion-style teacher). The trainer, the regression pairs and the
/// progress grids draw conditions only through this, so both kinds of teacher run the same DMD code.
/// </summary>
public abstract class Conditions
{
    /// <summary>Conditions for <paramref name="n"/> samples, drawn with <paramref name="g"/>, on <paramref name="device"/> (CPU by default); null for an unconditional teacher.</summary>
    public abstract Tensor? Draw(long n, Generator? g, Device? device = null);

    /// <summary>
    /// The denoiser with classifier-free guidance <paramref name="scale"/> against this kind's unconditional input (1 = itself),
    /// applied only at the noise levels of <paramref name="interval"/> when one is given.
    /// </summary>
    public abstract IDenoiser Guided(IDenoiser d, double scale, GuidanceInterval? interval = null);

    /// <summary>
    /// Conditions <paramref name="y"/> (B, ...) with each sample's replaced by the unconditional one (what guidance's
    /// unconditional branch is given) with probability <paramref name="p"/>, drawn with <paramref name="g"/>: classifier-free
    /// guidance's condition dropout, for training a denoiser's unconditional output alongside its conditional one.
    /// </summary>
    public abstract Tensor Dropped(Tensor y, double p, Generator? g);

    /// <summary>Which of <paramref name="n"/> samples to drop, each with probability <paramref name="p"/> (bool, B).</summary>
    protected static Tensor DropMask(long n, double p, Generator? g, Device device) => Rng.Uniform(new[] { n }, g, device).lt(p);

    /// <summary>The conditions of a progress grid with <paramref name="perRow"/> images per row, row-major, and the rows' labels.</summary>
    public abstract (Tensor? Y, int Rows, string[]? RowLabels) Grid(int perRow);

    /// <summary>Class labels of a teacher with <paramref name="labelDim"/> classes (0 = unconditional).</summary>
    public static Conditions Classes(int labelDim) => new ClassConditions(labelDim);
}

/// <summary>One-hot class labels, uniform over the classes; none for an unconditional teacher.</summary>
public sealed class ClassConditions : Conditions
{
    /// <summary>Labels of <paramref name="labelDim"/> classes.</summary>
    public ClassConditions(int labelDim) => LabelDim = labelDim;

    /// <summary>Number of classes (0 = unconditional).</summary>
    public int LabelDim { get; }

    /// <inheritdoc/>
    public override Tensor? Draw(long n, Generator? g, Device? device = null) => Rng.OneHotLabels(LabelDim, n, g, device);

    /// <inheritdoc/>
    public override IDenoiser Guided(IDenoiser d, double scale, GuidanceInterval? interval = null) => GuidedDenoiser.Wrap(d, scale, interval);

    /// <inheritdoc/>
    public override Tensor Dropped(Tensor y, double p, Generator? g) =>
        where(DropMask(y.shape[0], p, g, y.device).unsqueeze(1), zeros_like(y), y); // the zero row: GuidedDenoiser's unconditional input

    /// <inheritdoc/>
    public override (Tensor? Y, int Rows, string[]? RowLabels) Grid(int perRow) => LabelDim > 0
        ? (ImageSampling.ClassMajorLabels(LabelDim, perRow), LabelDim, Enumerable.Range(0, LabelDim).Select(i => i.ToString()).ToArray())
        : (null, perRow, null);
}

/// <summary>
/// Text prompts as a text-to-image teacher sees them: each prompt's context (its text encoder's last hidden state,
/// (tokens, C)), encoded once; a draw picks prompts uniformly. Guidance uses the unconditional context (the empty
/// prompt's), as Stable Diffusion's pipeline and DMD's real score do.
/// </summary>
public sealed class PromptConditions : Conditions
{
    /// <summary>The prompts, their contexts (P, tokens, C) and the unconditional context (1, tokens, C), on the host.</summary>
    public PromptConditions(IReadOnlyList<string> prompts, Tensor contexts, Tensor unconditional)
    {
        if (prompts.Count == 0) throw new DmdInputException("no prompts: give a prompts file with at least one line");
        if (contexts.dim() != 3 || contexts.shape[0] != prompts.Count)
            throw new ArgumentException($"contexts must be [{prompts.Count}, tokens, channels], got [{string.Join(", ", contexts.shape)}]");
        Prompts = prompts.ToArray();
        Contexts = contexts;
        Unconditional = unconditional.dim() == 2 ? unconditional.unsqueeze(0) : unconditional;
    }

    /// <summary>The prompts, in file order.</summary>
    public IReadOnlyList<string> Prompts { get; }
    /// <summary>Their contexts (P, tokens, C).</summary>
    public Tensor Contexts { get; }
    /// <summary>The unconditional context (1, tokens, C).</summary>
    public Tensor Unconditional { get; }

    /// <summary>Prompt indices for <paramref name="n"/> samples, uniform over the prompts (int64, on the host).</summary>
    public Tensor DrawIndices(long n, Generator? g) => Rng.Integers(0, Prompts.Count, n, g);

    /// <summary>The contexts of prompt indices <paramref name="index"/> (B), on <paramref name="device"/>.</summary>
    public Tensor Of(Tensor index, Device? device = null) => Contexts.index_select(0, index.cpu()).to(device ?? CPU);

    /// <inheritdoc/>
    public override Tensor? Draw(long n, Generator? g, Device? device = null) => Of(DrawIndices(n, g), device);

    /// <inheritdoc/>
    public override IDenoiser Guided(IDenoiser d, double scale, GuidanceInterval? interval = null) =>
        !GuidanceInterval.Guides(scale, interval) ? d : new GuidedDenoiser(d, scale, Unconditional, interval);

    /// <inheritdoc/>
    public override Tensor Dropped(Tensor y, double p, Generator? g)
    {
        var mask = DropMask(y.shape[0], p, g, y.device).reshape(-1, 1, 1);
        return where(mask, Unconditional.to(y.dtype).to(y.device).expand(y.shape), y);
    }

    /// <summary>
    /// The grid's rows: ten prompts spread evenly through the file (all of them when fewer; prompt i * P / 10, so a file
    /// written class by class shows every class), each repeated across its row and labelled with its text (cut at 28 characters).
    /// </summary>
    public override (Tensor? Y, int Rows, string[]? RowLabels) Grid(int perRow)
    {
        int rows = Math.Min(10, Prompts.Count);
        var picked = Enumerable.Range(0, rows).Select(i => (long)i * Prompts.Count / rows).ToArray();
        var index = tensor(picked).repeat_interleave(perRow);
        var labels = picked.Select(i => Prompts[(int)i].Length <= 28 ? Prompts[(int)i] : Prompts[(int)i][..27] + "…").ToArray();
        return (Of(index), rows, labels);
    }
}
