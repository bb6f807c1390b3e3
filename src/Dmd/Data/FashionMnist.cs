using Dmd.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Data;

/// <summary>
/// Fashion-MNIST (Xiao et al. 2017): 28x28 greyscale images of clothing in 10 classes, 60000 for training and
/// 10000 for testing, as four IDX files. Found where Debian's <c>dataset-fashion-mnist</c> package puts them or
/// in a folder the user gives (the files raw or gzipped, flat or in torchvision's FashionMNIST/raw layout).
/// </summary>
public static class FashionMnist
{
    /// <summary>Where <c>apt-get install dataset-fashion-mnist</c> puts the files.</summary>
    public const string DebianFolder = "/usr/share/datasets/fashion-mnist";

    /// <summary>How the command line names a custom folder (quoted in the not-found error).</summary>
    internal const string FolderOption = "--data fashion-mnist:FOLDER";

    /// <summary>The ten class names, in label order.</summary>
    public static readonly IReadOnlyList<string> ClassNames = new[]
    {
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    };

    /// <summary>
    /// Loads the training split (60000 images) or the test split (10000) as uint8 (N, 1, 28, 28) with labels.
    /// <paramref name="padTo32"/> adds 2 pixels of background (black) on each side, giving 32x32, the resolution
    /// of the EDM-style networks. <paramref name="folder"/> = null looks in <see cref="DebianFolder"/>.
    /// </summary>
    public static ImageDataset Load(bool test = false, string? folder = null, bool padTo32 = false, bool randomFlip = false)
    {
        var (imagesPath, labelsPath) = FindFiles(test ? "t10k" : "train", folder);
        var (images, labels) = Idx.ReadImagesAndLabels(imagesPath, labelsPath);
        var x = images.unsqueeze(1); // (N, 1, 28, 28)
        if (padTo32) x = Pad(x, 2);
        return new ImageDataset(x, labels, ClassNames.Count, ClassNames, randomFlip);
    }

    /// <summary>True when both splits can be found in the folder (or the Debian folder when null).</summary>
    public static bool IsAvailable(string? folder = null)
    {
        try { FindFiles("train", folder); FindFiles("t10k", folder); return true; }
        catch (DmdInputException) { return false; }
    }

    /// <summary>Zero (background) border of <paramref name="p"/> pixels around uint8 (N, C, H, W) images.</summary>
    internal static Tensor Pad(Tensor x, int p)
    {
        var y = zeros(new long[] { x.shape[0], x.shape[1], x.shape[2] + 2 * p, x.shape[3] + 2 * p }, dtype: x.dtype);
        y[.., .., p..(int)(p + x.shape[2]), p..(int)(p + x.shape[3])] = x;
        return y;
    }

    static (string Images, string Labels) FindFiles(string prefix, string? folder)
    {
        string root = folder ?? DebianFolder;
        // the names of the original distribution, gzipped or not, and the "train-images.idx3-ubyte" variant;
        // in the folder itself or in torchvision's root/FashionMNIST/raw
        var dirs = new[] { root, Path.Combine(root, "FashionMNIST", "raw"), Path.Combine(root, "raw") };
        string? Find(string kind, int rank) =>
            (from d in dirs
             from n in new[] { $"{prefix}-{kind}-idx{rank}-ubyte", $"{prefix}-{kind}.idx{rank}-ubyte" }
             from ext in new[] { ".gz", "" }
             let f = Path.Combine(d, n + ext)
             where File.Exists(f)
             select f).FirstOrDefault();
        var images = Find("images", 3);
        var labels = Find("labels", 1);
        if (images is not null && labels is not null) return (images, labels);

        string missing = $"{prefix}-{(images is null ? "images-idx3" : "labels-idx1")}-ubyte(.gz)";
        string where = Directory.Exists(root) ? $"{root} has no {missing}" : $"{root} does not exist";
        throw new DmdInputException($"Fashion-MNIST not found: {where}. Install it with 'sudo apt-get install dataset-fashion-mnist' " +
            $"(files in {DebianFolder}), or download the four files of https://github.com/zalandoresearch/fashion-mnist " +
            $"into a folder and give it with {FolderOption}");
    }
}
