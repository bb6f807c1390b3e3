using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Tests;

public class RuntimeTests
{
    [Fact]
    public void LibTorchLoadsAndComputes()
    {
        // a 2x2 product with a known answer, and autograd through it
        var a = tensor(new float[] { 1, 2, 3, 4 }, new long[] { 2, 2 }).requires_grad_(true);
        var b = tensor(new float[] { 5, 6, 7, 8 }, new long[] { 2, 2 });
        var c = a.matmul(b);
        Assert.Equal(new float[] { 19, 22, 43, 50 }, c.data<float>().ToArray());
        c.sum().backward();
        Assert.Equal(new float[] { 11, 15, 11, 15 }, a.grad!.data<float>().ToArray());
        Assert.StartsWith("2.10", torch.__version__);
    }
}
