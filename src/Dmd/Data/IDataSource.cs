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

    /// <summary>
    /// A random batch of given classes: for each class index in <paramref name="classIndex"/> (n) one sample of that class,
    /// uniform over the class (with replacement), and the one-hot labels. Data that is not class-labelled refuses with a
    /// <see cref="DmdInputException"/>.
    /// </summary>
    (Tensor X, Tensor? Labels) BatchOfClasses(Tensor classIndex, Generator? g) =>
        throw new DmdInputException($"a class-matched batch needs class-labelled data, and this {GetType().Name} has {(NumClasses == 0 ? "no labels" : "conditions that are not class labels")}");
}
