using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Dmd;

/// <summary>
/// Process-wide workarounds for libtorch's native code, applied before the first network runs (the library does it when
/// it loads; the tool and the tests call <see cref="Apply"/> first thing). Set <c>DMD_NATIVE_WORKAROUNDS=0</c> to skip all three.
/// <para>
/// On this project's 2-core Debian VM (x86-64 with AVX-512, VNNI and BF16) libtorch 2.10 read memory it had not written:
/// a forward pass of the small U-Nets returned all-NaN for finite weights and inputs in about 1.6 % of calls (123 of 7200
/// over 12 processes; 0 to 7 % per process), and with that fixed, a backward pass gave NaN gradients in 1.5-10 % of calls
/// (91 of 1800 over 3 processes), with one thread and no garbage collection running. Training steps went NaN at random
/// and the image tests failed. Measured remedies: oneDNN limited to AVX2 kernels removed the NaN forwards (0 of 3600);
/// glibc filling fresh heap blocks with zeros (M_PERTURB 255, what MALLOC_PERTURB_=255 does) removed the NaN gradients
/// (0 of 1800). Both are applied: <c>ONEDNN_MAX_CPU_ISA=AVX</c> unless the variable is set, and <c>mallopt(M_PERTURB, 255)</c>
/// (it also fills freed blocks with 0xFF, so a read after free shows up as NaN instead of stale numbers).
/// </para>
/// <para>
/// AVX, not AVX2 (2026-12-01): with oneDNN's AVX2 and AVX-512 kernels, the input gradient of a 3x3 convolution with
/// fewer than 8 output channels is wrong (float32 against float64: relative error 0.8-0.97, or NaN; finite differences
/// agree with float64), and the U-Nets end in such a convolution (1 channel for Fashion-MNIST, 3 for RGB), so every
/// gradient of a training step was wrong (0.93 relative error over all weights of the shipped U-Net) while the forward
/// pass and the loss were right. With oneDNN's AVX kernels every case measured is right to 4e-7. It costs speed
/// (measured side by side: a DMD iteration 1.1-1.9x slower); <c>ConvolutionGradientTests</c> checks a machine's kernels,
/// so set ONEDNN_MAX_CPU_ISA=AVX2 (or higher) only where those tests pass with it.
/// </para>
/// <para>
/// NNPACK off: on a CPU NNPACK does not support (this VM), libtorch tries it for every small-batch convolution on one
/// thread and prints "Could not initialize NNPACK! Reason: Unsupported hardware." each time (22 lines for
/// <c>dmd --threads 1 sample --n 10</c>), then falls back. TorchSharp has no <c>torch.backends.nnpack.enabled</c>, so the
/// switch it sets, <c>at::Context::setUserEnabledNNPACK(false)</c>, is called through libtorch_cpu's exported C++ symbols
/// (Linux names; where they are missing nothing happens). libtorch checks the switch before it tries NNPACK, so the
/// convolutions and their results are the ones it computes after the failed attempt anyway.
/// </para>
/// </summary>
internal static class NativeSetup
{
    [DllImport("libc", EntryPoint = "setenv")] static extern int SetEnv(string name, string value, int overwrite);
    [DllImport("libc", EntryPoint = "mallopt")] static extern int MallOpt(int param, int value);
    [DllImport("libtorch_cpu", EntryPoint = "_ZN2at13globalContextEv")] static extern IntPtr GlobalContext();
    [DllImport("libtorch_cpu", EntryPoint = "_ZN2at7Context20setUserEnabledNNPACKEb")]
    static extern void SetUserEnabledNnpack(IntPtr context, [MarshalAs(UnmanagedType.U1)] bool enabled);
    [DllImport("libtorch_cpu", EntryPoint = "_ZNK2at7Context17userEnabledNNPACKEv")]
    [return: MarshalAs(UnmanagedType.U1)] static extern bool UserEnabledNnpack(IntPtr context);
    const int M_PERTURB = -6;
    static bool applied;

    /// <summary>Applies the workarounds once (later calls do nothing).</summary>
    public static void Apply()
    {
        if (applied || !OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("DMD_NATIVE_WORKAROUNDS") == "0") return;
        applied = true;
        try
        {
            // the native environment (oneDNN reads it with getenv when it first dispatches); a value the user set is kept
            if (Environment.GetEnvironmentVariable("ONEDNN_MAX_CPU_ISA") is null) SetEnv("ONEDNN_MAX_CPU_ISA", "AVX", 0);
            if (Environment.GetEnvironmentVariable("MALLOC_PERTURB_") is null) MallOpt(M_PERTURB, 255);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
        try { SetUserEnabledNnpack(GlobalContext(), false); }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
    }

    /// <summary>Whether libtorch may use NNPACK (false once <see cref="Apply"/> has run on Linux; null where the symbols are missing).</summary>
    internal static bool? NnpackEnabled()
    {
        try { return UserEnabledNnpack(GlobalContext()); }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return null; }
    }

#pragma warning disable CA2255 // must run before any TorchSharp call creates a kernel or a tensor
    [ModuleInitializer]
    internal static void OnLoad() => Apply();
#pragma warning restore CA2255
}
