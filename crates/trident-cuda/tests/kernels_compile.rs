//! Every kernels/*.cu compiles with NVRTC for sm_80 and sm_90 through the backend's own compile
//! path (PTX and CUBIN). With `TRIDENT_PTX_DIR` set, the PTX is written there for `ptxas -v`
//! (scripts/check-kernels.sh). Without NVRTC on the library path the test says so and checks
//! nothing else; CI provides it.

use trident_cuda::compile::{compile_kernel, nvrtc_available, nvrtc_version, Output, KERNEL_FILES};

#[test]
fn kernels_compile_for_sm80_and_sm90() {
    if !nvrtc_available() {
        eprintln!(
            "SKIP kernels_compile: libnvrtc not found (set LD_LIBRARY_PATH to NVRTC 13.0's lib)"
        );
        return;
    }
    eprintln!("NVRTC {:?}", nvrtc_version().unwrap());
    let dir = std::env::var_os("TRIDENT_PTX_DIR").map(std::path::PathBuf::from);
    for (major, minor) in [(8, 0), (9, 0)] {
        for (file, _) in KERNEL_FILES {
            let ptx = compile_kernel(file, &format!("compute_{major}{minor}"), Output::Ptx)
                .unwrap_or_else(|e| panic!("{e}"));
            let text = String::from_utf8(ptx).expect("PTX is text");
            assert!(text.contains(".entry"), "{file}: no kernel entry in PTX");
            let cubin = compile_kernel(file, &format!("sm_{major}{minor}"), Output::Cubin)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&cubin[..4], b"\x7fELF", "{file}: CUBIN is not an ELF image");
            if let Some(d) = &dir {
                let stem = file.trim_end_matches(".cu");
                std::fs::write(d.join(format!("{stem}.sm_{major}{minor}.ptx")), &text).unwrap();
            }
        }
    }
}

#[test]
fn compile_errors_are_typed_and_name_the_kernel() {
    if !nvrtc_available() {
        eprintln!("SKIP compile_errors: libnvrtc not found");
        return;
    }
    let e = compile_kernel("heads.cu", "compute_1", Output::Ptx).unwrap_err().to_string();
    assert!(e.contains("heads.cu") && e.contains("compute_1"), "{e}");
    let e = compile_kernel("missing.cu", "compute_90", Output::Ptx).unwrap_err().to_string();
    assert!(e.contains("missing.cu"), "{e}");
}
