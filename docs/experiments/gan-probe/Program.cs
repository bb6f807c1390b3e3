// Can DMD2's GAN head, on the fake denoiser's bottleneck features, tell a student's samples from real Fashion-MNIST
// images at all? (docs/dmd2-experiments.md, "Can the GAN head tell the student from the data?") Run from the
// repository root:
//   dotnet run -c Release --project docs/experiments/gan-probe -- THREADS ITERS LR [GENERATOR [FEATURES [dequantize]]]
// GENERATOR: a generator folder (default models/fashion-mnist-student); FEATURES: the network whose features the head
// reads (default the teacher, where every cool-down's fake denoiser starts), "levels": one head per resolution of the
// teacher's U-Net, encoder and decoder (MultiLevelGanClassifier, logits summed), or "pixels": instead of the head, a
// small convolutional classifier of its own on the clean images. A fresh head (GanClassifier) is trained
// alone, with AdamW at LR, batch 64 real + 64 generated, noise levels as in training (grid indices uniform over the
// 1000-level Karras grid), the features without gradient; every ITERS/8 iterations it prints, on 1024 held-out
// real and 1024 held-out generated images, the loss at the training levels and the share classified right at fixed
// noise levels (0.5 = chance). The features are computed once (two noisings of each of 4096 training images of each
// kind), so the head trains on a fixed set and many iterations are cheap.
using Dmd;
using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.Networks;
using TorchSharp;
using static TorchSharp.torch;

torch.set_num_threads(int.Parse(args[0]));
int iters = int.Parse(args[1]);
double lr = double.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture);
string genPath = args.Length > 3 ? args[3] : "models/fashion-mnist-student";
string featPath = args.Length > 4 ? args[4] : "models/fashion-mnist-teacher";
const int Batch = 64, TrainN = 4096, TestN = 1024;

torch.manual_seed(0);
var gen = OneStepGenerator.Load(genPath);
var (features, spec) = DenoiserFile.Load(featPath is "pixels" or "levels" ? "models/fashion-mnist-teacher" : featPath, "teacher.safetensors");
features.eval();
var real = DmdTrainer.LoadRealData("fashion-mnist", spec);
var grid = KarrasSchedule.AscendingGrid(1000, 0.002, 80);
using var g = new Generator(1);

// generated images: random classes, the generator's own seeded noise
(Tensor X, Tensor Y) Generated(int n, long seed)
{
    var classes = Rng.Integers(0, 10, n, g).data<long>().Select(c => (int)c).ToArray();
    var parts = new List<Tensor>();
    for (int i = 0; i < n; i += 256)
        parts.Add(gen.Sample(classes[i..Math.Min(n, i + 256)], seed: seed + i));
    return (cat(parts), Rng.OneHot(tensor(classes.Select(c => (long)c).ToArray()), 10));
}
var (genTrain, genTrainY) = Generated(TrainN, 1_000_000);
var (genTest, genTestY) = Generated(TestN, 2_000_000);
// DEQUANTIZE (a sixth argument "dequantize"): the real images' 8-bit levels spread uniformly over their bins (width
// 2/255 in [-1, 1]), so that no head can tell them from generated ones by the lattice their pixels sit on
bool dequantize = args.Length > 5 && args[5] == "dequantize";
(Tensor X, Tensor? Y) RealBatch(int n)
{
    var (x, y) = real.Batch(n, g);
    return (dequantize ? x + (Rng.Uniform(x.shape, g) - 0.5) * (2.0 / 255) : x, y);
}
var (realTest, realTestY) = RealBatch(TestN);
Console.WriteLine($"generator {genPath} ({gen.Steps} step(s)), features of {featPath}; {TrainN} generated training images, {TestN} + {TestN} held out{(dequantize ? "; real images dequantized" : "")}");

if (args.Length > 4 && args[4] == "pixels")
{
    // not DMD2's head: a small convolutional classifier of its own on the clean images (32x32 -> 4x4 in three strided
    // convolutions, 128 channels), trained at LR on the same training images; the held-out share right says whether the
    // generated images can be told from the data one by one at all
    var (realTrainP, _) = RealBatch(TrainN);
    var disc = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding: 1), nn.SiLU(),
        nn.Conv2d(32, 64, 4, stride: 2, padding: 1), nn.SiLU(),
        nn.Conv2d(64, 128, 4, stride: 2, padding: 1), nn.SiLU(),
        nn.Conv2d(128, 128, 4, stride: 2, padding: 1), nn.SiLU(),
        nn.Flatten(), nn.Linear(128 * 16, 1));
    var optP = optim.AdamW(disc.parameters(), lr, 0.9, 0.999, weight_decay: 0.01);
    Tensor D(Tensor x) => disc.forward(x).reshape(x.shape[0]);
    void EvaluatePixels(int it)
    {
        using var _ = no_grad();
        disc.eval();
        double loss = DmdLoss.GanDiscriminator(D(realTest), D(genTest)).item<float>();
        long right = (D(realTest) > 0).sum().item<long>() + (D(genTest) <= 0).sum().item<long>();
        disc.train();
        Console.WriteLine($"iteration {it}: held-out loss {loss:F4} (chance {2 * Math.Log(2):F4}); right on clean images {(double)right / (2 * TestN):F3}");
    }
    EvaluatePixels(0);
    for (int it = 1; it <= iters; it++)
    {
        using var scope = NewDisposeScope();
        var loss = DmdLoss.GanDiscriminator(D(realTrainP.index_select(0, Rng.Integers(0, TrainN, Batch, g))),
                                            D(genTrain.index_select(0, Rng.Integers(0, TrainN, Batch, g))));
        optP.zero_grad();
        loss.backward();
        optP.step();
        if (it % (iters / 8) == 0) EvaluatePixels(it);
    }
    return;
}

// "levels": one head per resolution of the teacher's U-Net, encoder and decoder (MultiLevelGanClassifier, not DMD2's);
// otherwise DMD2's head on the bottleneck
bool multi = args.Length > 4 && args[4] == "levels";
nn.Module head;
Func<Tensor[], Tensor> Head;
if (multi)
{
    var m = new MultiLevelGanClassifier(((EdmUNet)features.Backbone).LevelFeatureShapes());
    head = m;
    Head = m.forward;
}
else
{
    var h = new GanClassifier(features.FeatureShape!);
    head = h;
    Head = f => h.forward(f[0]);
}
var opt = optim.AdamW(head.parameters(), lr, 0.9, 0.999, weight_decay: 0.01);

// the features of images noised at sigma (one level per image), without gradient, computed once: the head then
// trains on a fixed set (Draws noisings of each training image), which makes thousands of iterations cheap
Tensor[] Feats(Tensor x, Tensor y, Tensor sigma)
{
    using var _ = no_grad();
    var parts = new List<Tensor[]>();
    for (int i = 0; i < x.shape[0]; i += 256)
    {
        int j = (int)Math.Min(x.shape[0], i + 256);
        var xi = x[i..j];
        var xt = xi + sigma[i..j].view(-1, 1, 1, 1) * Rng.NormalLike(xi, g);
        parts.Add(multi ? features.LevelFeatures(xt, sigma[i..j], y[i..j]).Select(t => t.detach()).ToArray()
                        : new[] { features.Features(xt, sigma[i..j], y[i..j]).detach() });
    }
    return Enumerable.Range(0, parts[0].Length).Select(l => cat(parts.Select(p => p[l]).ToArray())).ToArray();
}
Tensor[] Pick(Tensor[] f, Tensor idx) => f.Select(t => t.index_select(0, idx)).ToArray();
const int Draws = 2;
var (realTrain, realTrainY) = RealBatch(TrainN);
Tensor Rep(Tensor t) => cat(Enumerable.Repeat(t, Draws).ToArray());
Tensor TrainLevels() => grid.index_select(0, Rng.Integers(0, 1000, Draws * TrainN, g));
var fReal = Feats(Rep(realTrain), Rep(realTrainY!), TrainLevels());
var fGen = Feats(Rep(genTrain), Rep(genTrainY), TrainLevels());
var testLevels = grid.index_select(0, Rng.Integers(0, 1000, TestN, g));
var fRealTest = Feats(realTest, realTestY!, testLevels);
var fGenTest = Feats(genTest, genTestY, testLevels);
double[] probe = { 0.002, 0.2, 1, 5, 20 };
var probeFeats = probe.Select(sig => (Feats(realTest, realTestY!, full(TestN, sig)), Feats(genTest, genTestY, full(TestN, sig)))).ToArray();
Console.WriteLine($"features computed ({Draws} noisings of each training image{(multi ? $", {fReal.Length} levels: " + string.Join(" ", fReal.Select(t => $"{t.shape[1]}x{t.shape[2]}x{t.shape[3]}")) : "")})");

void Evaluate(int it)
{
    using var _ = no_grad();
    head.eval();
    double loss = DmdLoss.GanDiscriminator(Head(fRealTest), Head(fGenTest)).item<float>();
    var line = probe.Select((sig, k) =>
    {
        long right = (Head(probeFeats[k].Item1) > 0).sum().item<long>() + (Head(probeFeats[k].Item2) <= 0).sum().item<long>();
        return $"{sig:G3}: {(double)right / (2 * TestN):F3}";
    });
    head.train();
    Console.WriteLine($"iteration {it}: held-out loss {loss:F4} (chance {2 * Math.Log(2):F4}); right at sigma {string.Join(", ", line)}");
}

Evaluate(0);
for (int it = 1; it <= iters; it++)
{
    using var scope = NewDisposeScope();
    var ir = Rng.Integers(0, Draws * TrainN, Batch, g);
    var ig = Rng.Integers(0, Draws * TrainN, Batch, g);
    var loss = DmdLoss.GanDiscriminator(Head(Pick(fReal, ir)), Head(Pick(fGen, ig)));
    opt.zero_grad();
    loss.backward();
    opt.step();
    if (it % (iters / 8) == 0) Evaluate(it);
}
