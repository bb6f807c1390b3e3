using static TorchSharp.torch;

namespace Dmd.Networks;

/// <summary>
/// An ordered set of named child modules, registered under their names (so a parent's field <c>enc</c> gives weights
/// <c>enc.32x32_conv.weight</c>, as EDM's <c>torch.nn.ModuleDict</c> does), read back by position.
/// TorchSharp's <c>ModuleDict</c> is not used because it cannot move to another device: its two indexers are both
/// properties named <c>Item</c>, and <c>Module.to(device)</c> builds a dictionary of the module's properties by name,
/// which throws "An item with the same key has already been added. Key: Item" (TorchSharp 0.107). This class has one.
/// </summary>
internal sealed class NamedModules : nn.Module
{
    private readonly List<(string Name, nn.Module Module)> items = new();

    public NamedModules() : base(nameof(NamedModules)) { }

    /// <summary>Adds a child under <paramref name="name"/> (registered for state dicts, devices, train/eval).</summary>
    public void Add(string name, nn.Module module)
    {
        register_module(name, module);
        items.Add((name, module));
    }

    /// <summary>How many children there are.</summary>
    public int Count => items.Count;

    /// <summary>The child at a position, with its name, in the order added.</summary>
    public (string Name, nn.Module Module) this[int index] => items[index];
}
