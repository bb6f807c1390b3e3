using TorchSharp;
using static TorchSharp.torch;

namespace Dmd;

/// <summary>Random draws that always go through an explicit generator, so that a run can be resumed bit for bit.</summary>
public static class Rng
{
    /// <summary>Standard normal noise with the shape, dtype and device of <paramref name="like"/>.</summary>
    /// Draws happen on the CPU generator and move to the tensor's device, so runs are reproducible anywhere.
    public static Tensor NormalLike(Tensor like, Generator? g) =>
        randn(like.shape, dtype: like.dtype, generator: g).to(like.device);

    /// <summary>Standard normal noise of a given shape on a device.</summary>
    public static Tensor Normal(long[] shape, Generator? g, Device? device = null) =>
        randn(shape, generator: g).to(device ?? CPU);

    /// <summary>Uniform [0, 1) numbers of a given shape on a device.</summary>
    public static Tensor Uniform(long[] shape, Generator? g, Device? device = null) =>
        rand(shape, generator: g).to(device ?? CPU);

    /// <summary>Uniform integers in [low, high) of shape (n).</summary>
    public static Tensor Integers(long low, long high, long n, Generator? g, Device? device = null) =>
        randint(low, high, new long[] { n }, dtype: ScalarType.Int64, generator: g).to(device ?? CPU);

    /// <summary>Random one-hot labels (n, classes), uniform over classes; null when classes = 0.</summary>
    public static Tensor? OneHotLabels(int classes, long n, Generator? g, Device? device = null) =>
        classes == 0 ? null : nn.functional.one_hot(Integers(0, classes, n, g, device), classes).to(ScalarType.Float32);

    /// <summary>One-hot encoding of given class indices.</summary>
    public static Tensor OneHot(Tensor classIndex, int classes) =>
        nn.functional.one_hot(classIndex.to(ScalarType.Int64), classes).to(ScalarType.Float32);
}
