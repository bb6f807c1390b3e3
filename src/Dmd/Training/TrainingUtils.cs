using TorchSharp.PyBridge;
using System.Globalization;
using System.Runtime;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dmd.Training;

/// <summary>Small pieces every training loop shares: learning-rate control, clipping, EMA, weight copies.</summary>
internal static class TrainingUtils
{
    /// <summary>Sets the learning rate of every parameter group.</summary>
    public static void SetLearningRate(optim.Optimizer opt, double lr)
    {
        foreach (var g in opt.ParamGroups) g.LearningRate = lr;
    }

    /// <summary>Linear warm-up from lr/warmup to lr over <paramref name="warmup"/> steps, then constant.</summary>
    public static double WarmupLr(double lr, int step, int warmup) => warmup <= 0 ? lr : lr * Math.Min(1.0, (step + 1) / (double)warmup);

    /// <summary>Clips the global gradient norm of a module's parameters; returns the norm before clipping.</summary>
    public static double ClipGradNorm(nn.Module m, double maxNorm) => ClipGradNorm(m.parameters(), maxNorm);

    /// <summary>
    /// Clips the global gradient norm of several modules' parameters together (one norm over all); returns the norm
    /// before clipping (NaN on the meta device, whose tensors have no values: the device-placement tests run there).
    /// </summary>
    public static double ClipGradNorm(IEnumerable<Parameter> parameters, double maxNorm)
    {
        var ps = parameters.Where(p => p.requires_grad && p.grad is not null).ToList();
        if (ps.Count == 0 || maxNorm <= 0) return 0;
        if (ps[0].device_type == DeviceType.META) return double.NaN;
        return nn.utils.clip_grad_norm_(ps, maxNorm);
    }

    /// <summary>
    /// The value of a one-element tensor for logging, copied to the host; NaN on the meta device (shapes without values,
    /// where the tests check that every tensor of a training step is on the networks' device).
    /// </summary>
    public static double Value(Tensor t) => t.device_type == DeviceType.META ? double.NaN : t.item<float>();

    /// <summary>
    /// Switches off gradients for the parameters of <paramref name="modules"/> until disposed (then restores each one's
    /// setting): a loss differentiated through a network to its input leaves the network's weights alone, as DMD2's
    /// <c>guidance_model.requires_grad_(False)</c> during the generator's turn.
    /// </summary>
    public static IDisposable NoParameterGradients(params nn.Module[] modules)
    {
        var switched = modules.SelectMany(m => m.parameters()).Where(p => p.requires_grad).ToList();
        foreach (var p in switched) p.requires_grad = false;
        return new Restore(() => { foreach (var p in switched) p.requires_grad = true; });
    }

    private sealed class Restore(Action undo) : IDisposable
    {
        private Action? undo = undo;
        public void Dispose() { undo?.Invoke(); undo = null; }
    }

    /// <summary>In-place exponential moving average: ema = beta ema + (1 - beta) p, buffers copied.</summary>
    public static void UpdateEma(nn.Module ema, nn.Module net, double beta)
    {
        using var _ = no_grad();
        using var weight = torch.tensor(1 - beta); // a tensor, not an implicit Scalar (see DenoiserExtensions.Const)
        var src = net.state_dict();
        foreach (var (k, e) in ema.state_dict())
        {
            var p = src[k];
            if (e.is_floating_point()) e.lerp_(p, weight.to(e.dtype));
            else e.copy_(p);
        }
    }

    /// <summary>Copies all parameters and buffers from one module into another of the same architecture.</summary>
    public static void CopyWeights(nn.Module from, nn.Module to)
    {
        using var _ = no_grad();
        var src = from.state_dict();
        foreach (var (k, t) in to.state_dict()) t.copy_(src[k]);
    }

    /// <summary>Freezes a module: no gradients, eval mode.</summary>
    public static void Freeze(nn.Module m)
    {
        foreach (var p in m.parameters()) p.requires_grad = false;
        m.eval();
    }

    /// <summary>
    /// Drops every gradient of a module (PyTorch's <c>zero_grad(set_to_none=True)</c>, its default since 2.0; TorchSharp's
    /// <c>zero_grad</c> fills zeros): after the next backward only the parameters the loss reached have a gradient, and
    /// AdamW leaves the others as they are (no weight decay, no step on old momentum).
    /// </summary>
    public static void ClearGradients(nn.Module m)
    {
        foreach (var p in m.parameters()) p.grad = null;
    }

    /// <summary>
    /// Whether a loss and every gradient of a module are finite, i.e. whether the optimiser step about to be taken is
    /// safe. A step that is not is skipped (as PyTorch's AMP GradScaler does) and counted; the run loop stops a run whose
    /// steps keep being skipped (<see cref="TrainingLoop.MaxSkippedInARow"/>).
    /// </summary>
    public static bool UpdateIsFinite(Tensor loss, nn.Module m)
    {
        if (loss.device_type == DeviceType.META) return true; // no values to check
        using var _ = no_grad();
        using (var ok = loss.detach().isfinite().all()) if (!ok.item<bool>()) return false;
        foreach (var p in m.parameters())
            if (p.grad is Tensor g)
                using (var ok = g.isfinite().all()) if (!ok.item<bool>()) return false;
        return true;
    }

    /// <summary>Whether every floating-point parameter and buffer of a module is finite.</summary>
    public static bool AllFinite(nn.Module m)
    {
        if (m.parameters().FirstOrDefault()?.device_type == DeviceType.META) return true; // no values to check
        using var _ = no_grad();
        foreach (var (_, t) in m.state_dict())
            if (t.is_floating_point())
                using (var ok = t.isfinite().all()) if (!ok.item<bool>()) return false;
        return true;
    }

    /// <summary>Number of parameter values (elements) of a module, trainable or frozen.</summary>
    public static long ParameterCount(nn.Module m) => m.parameters().Sum(p => p.numel());

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "malloc_trim")]
    private static extern int MallocTrim(UIntPtr pad);

    /// <summary>
    /// Hands memory that libtorch freed back to the OS (glibc keeps it otherwise, so one large transient peak, such
    /// as sampling a grid at a bigger batch than training uses, would show as a permanent RSS step). Linux only.
    /// </summary>
    public static void ReleaseFreedMemory()
    {
        if (!OperatingSystem.IsLinux()) return;
        try { MallocTrim(UIntPtr.Zero); } catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
    }

    /// <summary>
    /// Frees the native memory of TorchSharp objects that only a finalizer releases, above all the Scalars TorchSharp makes
    /// of C# numbers (its Adam/AdamW steps make several per parameter tensor per step). glibc carves these small, long-lived
    /// blocks out of the chunks the step's freed tensors leave, so until a GC finalizes them those chunks cannot hold the
    /// next step's tensors and RSS grows by about one step's temporaries per step. How long that lasts depends on .NET's
    /// gen0 budget, which it sizes from the CPU's cache (measured with a 256 MB budget: DMD on points 377 MB at step 20,
    /// 2.4 GB at step 380; with this call every step 247 -> 248 MB). About 2 ms; the run loop calls it after every step.
    /// </summary>
    public static void FreeFinalizableNatives()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
    }

    /// <summary>
    /// <c>opt.step()</c> with no garbage collection possible while it runs. TorchSharp's Adam/AdamW make Scalars of C#
    /// numbers (<c>add_(eps)</c>, <c>mul_(beta1)</c>, ...) that only a finalizer frees and that nothing keeps alive while
    /// the native op reads them: a collection during the op (set off by another thread's allocation, the finalizer
    /// thread's included) can free one mid-call, and the op fails on a freed Scalar ("Expected false to be true ...
    /// toFloat", seen once when a resumed 4-step run took its first step). Inside a no-GC region no collection starts;
    /// the step's own allocations (a few small objects per parameter) fit its budget many times over.
    /// </summary>
    public static void OptimizerStep(optim.Optimizer opt)
    {
        bool region = GCSettings.LatencyMode != GCLatencyMode.NoGCRegion && GC.TryStartNoGCRegion(NoGcBudget);
        try { opt.step(); }
        finally { if (region && GCSettings.LatencyMode == GCLatencyMode.NoGCRegion) GC.EndNoGCRegion(); }
    }

    const long NoGcBudget = 16L << 20;

    /// <summary>Resident memory of this process in MB (logged beside the losses, to catch leaks).</summary>
    public static double RssMb()
    {
        using var p = System.Diagnostics.Process.GetCurrentProcess();
        return p.WorkingSet64 / 1048576.0;
    }
}
