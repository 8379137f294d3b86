//! The `peerup` binary: all behaviour lives in the library (`peerup_gateway::cli`).

fn main() -> std::process::ExitCode {
    calm_allocator();
    peerup_gateway::cli::main()
}

/// Block size that raises glibc malloc's thresholds: see [`calm_allocator`].
const CALM_BLOCK: usize = 1 << 20;

/// glibc's malloc hands a block of 128 KiB or more its own mapping, and gives a thread arena's
/// free top back to the kernel once it exceeds 128 KiB; a transfer allocates and frees a yamux
/// frame (up to 128 KiB) per frame sent, so the arenas were shrunk (madvise) and faulted back
/// in ~1,000 times per GiB in every process on the path (~5% of their CPU). Freeing one mapped
/// block raises both thresholds to its size (mapping) and twice it (trimming), glibc's own
/// adaptive rule: so one 1 MiB block is allocated and freed before anything else runs. An arena
/// then keeps at most 2 MiB of free top. Other allocators ignore it.
fn calm_allocator() {
    let block = std::hint::black_box(vec![0u8; CALM_BLOCK]);
    drop(block);
}
