using static TorchSharp.torch;

namespace Dmd.Data;

/// <summary>
/// The samples of a labelled set grouped by class, for drawing samples of given classes: one sort of the labels, then
/// each draw is an offset into its class's run.
/// </summary>
sealed class ClassRuns
{
    readonly Tensor order, start, count;
    readonly int numClasses;

    /// <summary>Groups the samples by their class index (N) in [0, <paramref name="numClasses"/>).</summary>
    public ClassRuns(Tensor classIndex, int numClasses)
    {
        this.numClasses = numClasses;
        long n = classIndex.shape[0];
        // kept for the set's life, whatever dispose scope the first draw runs in
        using (NewDisposeScope())
        {
            var c = classIndex.to(ScalarType.Int64).cpu();
            order = (c * n + arange(n)).argsort().DetachFromDisposeScope(); // unique keys: one order whatever sort libtorch uses
            count = c.bincount(null, numClasses).DetachFromDisposeScope();
            start = (count.cumsum(0) - count).DetachFromDisposeScope();
        }
    }

    /// <summary>
    /// For each wanted class index (n), the index of one sample of that class, uniform over the class (with replacement),
    /// drawn from <paramref name="g"/>; a wanted class out of range or without samples is a <see cref="DmdInputException"/>.
    /// </summary>
    public Tensor Draw(Tensor wanted, Generator? g)
    {
        wanted = wanted.to(ScalarType.Int64).cpu();
        if (wanted.numel() > 0 && (wanted.min().item<long>() < 0 || wanted.max().item<long>() >= numClasses))
            throw new DmdInputException($"class indices must lie in [0, {numClasses})");
        var n = count.index_select(0, wanted);
        if (n.numel() > 0 && n.min().item<long>() == 0)
            throw new DmdInputException($"the data has no sample of class {wanted[n.argmin()].item<long>()}, which a class-matched batch asks for");
        var offset = (Rng.Uniform(new[] { wanted.shape[0] }, g).to(ScalarType.Float64) * n).floor().to(ScalarType.Int64).minimum(n - 1);
        return order.index_select(0, start.index_select(0, wanted) + offset);
    }
}
