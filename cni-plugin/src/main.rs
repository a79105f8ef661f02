//! `moat`: run by the container runtime as a CNI plugin (CNI_COMMAND set),
//! or by an operator with a subcommand (`moat project join a b`).

fn main() {
    let cni = std::env::var_os("CNI_COMMAND").is_some() || std::env::args_os().len() < 2;
    std::process::exit(if cni {
        moat_cni::entry::run()
    } else {
        moat_cni::cli::run()
    });
}
