using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Data;

/// <summary>A training set held in memory from which random batches are drawn.</summary>
public interface IDataSource
{
    /// <summary>Shape of one sample (no batch dimension).</summary>
    int[] Shape { get; }

    /// <summary>Number of classes (0 = unlabelled).</summary>
    int NumClasses { get; }

    /// <summary>Number of samples held.</summary>
    long Count { get; }

    /// <summary>A random batch (with replacement): samples as float32 and one-hot labels (null when unlabelled).</summary>
    (Tensor X, Tensor? Labels) Batch(int n, Generator? g);
}
