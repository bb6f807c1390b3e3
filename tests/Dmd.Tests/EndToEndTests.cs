using Dmd.Cli;
using Dmd.Pipelines;

namespace Dmd.Tests;

public class EndToEndTests
{
    [Fact]
    public void DmdStudentOnTheRingMatchesItsTeacherInOneStep()
    {
        // the quick preset of `dmd toy2d`: teacher, pairs and full DMD on the 8-Gaussian ring, on CPU
        var dir = TestUtil.TempDir();
        var exp = new Toy2dExperiment(Toy2dPresets.Quick with { Ablations = false });
        var res = exp.Run(dir);
        var teacher = res.Rows.Single(r => r.Model.StartsWith("teacher (Heun"));
        var oneStep = res.Rows.Single(r => r.Model == "teacher (1 step)");
        var student = res.Rows.Single(r => r.Model.StartsWith("DMD"));
        Assert.Equal(35, teacher.Nfe);
        Assert.Equal(1, student.Nfe);
        // DMD amplifies floating-point differences between CPUs and thread counts, so the bar is set from the measured
        // spread, not from one run. Without the weight average this budget gave 1.26x-3.26x (23 runs: 6 teacher seeds
        // x 1-2 threads, 3 DMD seeds; one fresh machine 2.66x); with the preset's average (decay 0.99) 1.64x-1.95x over
        // 7 runs (teacher seeds 0 and 5, DMD seeds 1-3, decay 0.99-0.995), student/one-step teacher <= 2.2 %, 8 modes
        // in every run. Bar: 3.0x (1.5x the worst measured), 5 %, 8 modes.
        Assert.True(student.EnergyDistance <= 3.0 * teacher.EnergyDistance,
            $"student ED {student.EnergyDistance:F4} vs teacher (35 NFE) {teacher.EnergyDistance:F4}");
        Assert.True(student.EnergyDistance < 0.05 * oneStep.EnergyDistance,
            $"student ED {student.EnergyDistance:F4} vs teacher 1 step {oneStep.EnergyDistance:F4}");
        Assert.Equal(8, student.ModesCovered);
        foreach (var f in new[] { "results.json", "samples.png", "losses.png", "dmd-full/generator.safetensors", "dmd-full/config.json" })
            Assert.True(File.Exists(Path.Combine(dir, f)), f);
    }
}
