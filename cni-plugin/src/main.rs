//! `moat`: run by the container runtime as a CNI plugin (CNI_COMMAND set).

fn main() {
    std::process::exit(moat_cni::entry::run());
}
