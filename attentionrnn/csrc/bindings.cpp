// The Python module of the fused diagonal-LSTM scan kernels (attentionrnn/layers/fused.py calls
// it; attentionrnn/layers/_extension.py builds it on first use with torch.utils.cpp_extension;
// without it the package uses the PyTorch implementation, which gives the same results).
//
//   args = module.ScanArgs()         # every field set by name, see scans.h
//   args.e_rows = ...; args.w_cat = ...; args.length = [...]; ...
//   module.forward(args)   -> {"out", "states", "cells"[, "acts"]}
//   module.backward(args)  -> {"d_e", "d_w_cat", "d_b_in"[, "d_w_att", "d_b_att"][, "d_w_read"]}
//   module.vector_bytes    # the SIMD vector size w_cat_t is padded to
//   module.pair_products   # whether the bf16 pair products (w_pairs, w_pairs_t) are compiled in
//
// The other sources: simd.h (vector math), products.h (small matrix products), cells.h (one LSTM
// cell, forward and backward), scan_params.h (the scan's parameters and the layout, restated from
// layers/diagonal.py), scans.h (these entry points), scan_dispatch.h (what both passes share:
// argument checks, dispatch on the gate width), scan_forward.cpp and scan_backward.cpp (the scans
// through time, forward and backward, with their entry points).

#include <torch/extension.h>

#include "scans.h"
#include "pair_products.h"
#include "simd.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using attentionrnn::ScanArgs;
  pybind11::class_<ScanArgs>(m, "ScanArgs", "the fused scan's parameters, set field by field")
      .def(pybind11::init<>())
      .def_readwrite("e_rows", &ScanArgs::e_rows)
      .def_readwrite("index", &ScanArgs::index)
      .def_readwrite("w_cat", &ScanArgs::w_cat)
      .def_readwrite("w_cat_t", &ScanArgs::w_cat_t)
      .def_readwrite("b_in", &ScanArgs::b_in)
      .def_readwrite("w_att", &ScanArgs::w_att)
      .def_readwrite("b_att", &ScanArgs::b_att)
      .def_readwrite("w_read", &ScanArgs::w_read)
      .def_readwrite("w_pairs", &ScanArgs::w_pairs)
      .def_readwrite("w_pairs_t", &ScanArgs::w_pairs_t)
      .def_readwrite("height", &ScanArgs::height)
      .def_readwrite("width", &ScanArgs::width)
      .def_readwrite("padded_size", &ScanArgs::padded_size)
      .def_readwrite("first_row", &ScanArgs::first_row)
      .def_readwrite("length", &ScanArgs::length)
      .def_readwrite("packed_start", &ScanArgs::packed_start)
      .def_readwrite("padded_start", &ScanArgs::padded_start)
      .def_readwrite("neighbour_start", &ScanArgs::neighbour_start)
      .def_readwrite("pad_rows", &ScanArgs::pad_rows)
      .def_readwrite("keep_acts", &ScanArgs::keep_acts)
      .def_readwrite("grad_out", &ScanArgs::grad_out)
      .def_readwrite("states", &ScanArgs::states)
      .def_readwrite("cells", &ScanArgs::cells)
      .def_readwrite("acts", &ScanArgs::acts)
      .def_readwrite("d_e_rows", &ScanArgs::d_e_rows);
  m.def("forward", &attentionrnn::scan_forward, "diagonal LSTM scan, forward (fused cells)",
        pybind11::arg("args"));
  m.def("backward", &attentionrnn::scan_backward, "diagonal LSTM scan, backward through time",
        pybind11::arg("args"));
  m.attr("vector_bytes") = attentionrnn::kVectorBytes;
  m.attr("pair_products") = attentionrnn::kPairProducts;
}
