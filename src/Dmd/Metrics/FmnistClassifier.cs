using System.Diagnostics;
using Dmd.Data;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Dmd.Metrics;

/// <summary>
/// The Fashion-MNIST feature network: a small CNN classifier on 32x32 greyscale images in [-1, 1] (the 28x28
/// images padded by 2 black pixels, as the project stores them). Its 128-d penultimate features (global average
/// pool of the last conv block) are the feature space of FD-FMNIST, a Frechet distance in the spirit of FID;
/// its logits judge the class of conditional samples. Trained once on the training split and shipped in
/// <c>models/fmnist-classifier/</c> (see <see cref="FdFmnist"/> and the folder's MODEL_CARD.md).
/// <code>
///   32x32x1  -> conv3x3  16, BN, ReLU -> maxpool -> 16x16
///            -> conv3x3  32, BN, ReLU -> maxpool ->  8x8
///            -> conv3x3  64, BN, ReLU -> maxpool ->  4x4
///            -> conv3x3 128, BN, ReLU -> global average pool -> features (128)
///            -> dropout -> linear 10 -> logits
/// </code>
/// </summary>
public sealed class FmnistClassifier : nn.Module<Tensor, Tensor>
{
    /// <summary>Dimension of the feature vector.</summary>
    public const int FeatureDim = 128;
    /// <summary>Number of classes.</summary>
    public const int NumClasses = 10;
    /// <summary>Number of trainable parameters (documented in the model card; checked by the tests).</summary>
    public const long ParameterCount = 98_682;

    private readonly Conv2d conv1, conv2, conv3, conv4;
    private readonly BatchNorm2d bn1, bn2, bn3, bn4;
    private readonly Dropout dropout;
    private readonly Linear fc;

    /// <summary>A freshly initialised classifier; <paramref name="dropoutRate"/> is the dropout before the last linear layer.</summary>
    public FmnistClassifier(double dropoutRate = 0.1) : base(nameof(FmnistClassifier))
    {
        conv1 = nn.Conv2d(1, 16, 3, padding: 1, bias: false);   bn1 = nn.BatchNorm2d(16);
        conv2 = nn.Conv2d(16, 32, 3, padding: 1, bias: false);  bn2 = nn.BatchNorm2d(32);
        conv3 = nn.Conv2d(32, 64, 3, padding: 1, bias: false);  bn3 = nn.BatchNorm2d(64);
        conv4 = nn.Conv2d(64, 128, 3, padding: 1, bias: false); bn4 = nn.BatchNorm2d(128);
        dropout = nn.Dropout(dropoutRate);
        fc = nn.Linear(FeatureDim, NumClasses);
        RegisterComponents();
    }

    /// <summary>
    /// Penultimate features (N, 128) of images (N, 1, 32, 32) in [-1, 1]; 28x28 images are padded to 32x32 first.
    /// </summary>
    public Tensor Features(Tensor x)
    {
        x = CheckInput(x);
        x = F.max_pool2d(F.relu(bn1.forward(conv1.forward(x))), 2);
        x = F.max_pool2d(F.relu(bn2.forward(conv2.forward(x))), 2);
        x = F.max_pool2d(F.relu(bn3.forward(conv3.forward(x))), 2);
        x = F.relu(bn4.forward(conv4.forward(x)));
        return x.mean(new long[] { 2, 3 });
    }

    /// <summary>Class logits (N, 10) from features (N, 128).</summary>
    public Tensor Head(Tensor features) => fc.forward(dropout.forward(features));

    /// <summary>Class logits (N, 10) of images (N, 1, 32, 32) in [-1, 1].</summary>
    public override Tensor forward(Tensor x) => Head(Features(x));

    /// <summary>Pads 28x28 images with background (-1) to 32x32 and rejects any other shape.</summary>
    static Tensor CheckInput(Tensor x)
    {
        if (x.dim() != 4 || x.shape[1] != 1 || !((x.shape[2] == 32 && x.shape[3] == 32) || (x.shape[2] == 28 && x.shape[3] == 28)))
            throw new DmdInputException($"the Fashion-MNIST classifier takes greyscale images (N, 1, 32, 32) or (N, 1, 28, 28) in [-1, 1], " +
                                               $"got [{string.Join(", ", x.shape)}]");
        if (x.dtype != ScalarType.Float32) x = x.to(ScalarType.Float32);
        return x.shape[2] == 28 ? F.pad(x, new long[] { 2, 2, 2, 2 }, value: -1) : x;
    }
}

/// <summary>Settings of the classifier's training (Training.ClassifierTrainer); the defaults produce the shipped classifier.</summary>
public sealed record FmnistClassifierConfig
{
    /// <summary>passes over the 60000 training images</summary>
    public int Epochs { get; init; } = 10;
    /// <summary>images per Adam step (the last partial batch of an epoch is dropped)</summary>
    public int BatchSize { get; init; } = 128;
    /// <summary>Adam; cosine decay to 0 over the run</summary>
    public double LearningRate { get; init; } = 2e-3;
    /// <summary>Adam's (L2) weight decay</summary>
    public double WeightDecay { get; init; } = 0;
    /// <summary>before the last linear layer</summary>
    public double Dropout { get; init; } = 0.1;
    /// <summary>mirror half the images left-right</summary>
    public bool RandomFlip { get; init; } = true;
    /// <summary>random translation by up to this many pixels (at most 2: the padding)</summary>
    public int MaxShift { get; init; } = 0;
    /// <summary>initialisation, shuffling, augmentation and dropout</summary>
    public ulong Seed { get; init; } = 0;
}

/// <summary>Test accuracy of a classifier: overall and per class (index order of <see cref="FashionMnist.ClassNames"/>).</summary>
public sealed record ClassAccuracy(double Overall, double[] PerClass, long[] CountPerClass)
{
    /// <summary>Percentages, e.g. "91.23 % overall; per class: 0: 95.0 %, 1: ..."; "-" for a class without images.</summary>
    public override string ToString() =>
        $"{100 * Overall:F2} % overall; per class: " +
        string.Join(", ", PerClass.Select((a, c) => $"{c}: {(double.IsNaN(a) ? "-" : $"{100 * a:F1} %")}"));
}

/// <summary>Accuracy of <see cref="FmnistClassifier"/> (training: Training.ClassifierTrainer).</summary>
public static class FmnistClassifierTrainer
{
    /// <summary>Accuracy of the classifier on labelled images (uint8 (N, 1, 32, 32)), in batches, in eval mode.</summary>
    public static ClassAccuracy Evaluate(FmnistClassifier net, ImageDataset data, int batch = 500)
    {
        if (data.ClassIndex is null) throw new ArgumentException("evaluation needs labelled images");
        net.eval();
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var preds = new List<Tensor>();
        for (long i = 0; i < data.Count; i += batch)
        {
            using var step = NewDisposeScope(); // frees each batch's activations before the next
            preds.Add(net.forward(ImageDataset.ToFloat(data.Images.narrow(0, i, Math.Min(batch, data.Count - i)))).argmax(1).MoveToOuterDisposeScope());
        }
        return Accuracy(cat(preds, 0), data.ClassIndex, FmnistClassifier.NumClasses);
    }

    /// <summary>Overall and per-class share of predictions equal to the labels (class indices (N)).</summary>
    public static ClassAccuracy Accuracy(Tensor predicted, Tensor labels, int classes)
    {
        var p = predicted.to(ScalarType.Int64).cpu().data<long>().ToArray();
        var l = labels.to(ScalarType.Int64).cpu().data<long>().ToArray();
        var correct = new long[classes];
        var count = new long[classes];
        for (int i = 0; i < l.Length; i++)
        {
            count[l[i]]++;
            if (p[i] == l[i]) correct[l[i]]++;
        }
        return new ClassAccuracy(l.Length == 0 ? double.NaN : correct.Sum() / (double)l.Length,
                                 correct.Select((c, k) => count[k] == 0 ? double.NaN : c / (double)count[k]).ToArray(), count);
    }
}
