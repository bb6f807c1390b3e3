// Uses the Dmd package as a stranger would: load the shipped one-step generator, draw one image per class for classes
// 0, 1, 2, and check what came back. Exit code 0 only if the batch has the expected shape and sane values.
using Dmd.Distillation;

if (args.Length != 1) { Console.Error.WriteLine("usage: Consumer <generator folder, e.g. models/fashion-mnist-student>"); return 2; }

var g = OneStepGenerator.Load(args[0]);
var x = g.Sample(new[] { 0, 1, 2 });

long[] shape = x.shape;
float min = x.min().item<float>(), max = x.max().item<float>(), std = x.std().item<float>();
bool finite = x.isfinite().all().item<bool>();
Console.WriteLine($"sampled ({string.Join(", ", shape)}), values in [{min:F3}, {max:F3}], std {std:F3}, all finite: {finite}");

var problems = new List<string>();
if (shape.Length != 4 || shape[0] != 3) problems.Add("expected a batch of 3 images, shape (3, C, H, W)");
if (!finite) problems.Add("non-finite values");
// images are in [-1, 1]; a one-step generator is not clamped, so allow a little overshoot
if (min < -1.5f || max > 1.5f) problems.Add("values far outside [-1, 1]");
if (!(std > 0.05f)) problems.Add("nearly constant images");
foreach (var p in problems) Console.Error.WriteLine($"FAIL: {p}");
if (problems.Count == 0) Console.WriteLine("OK: the packed Dmd library loads the generator and samples");
return problems.Count == 0 ? 0 : 1;
