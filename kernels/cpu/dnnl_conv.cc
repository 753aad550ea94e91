#include "kernels/cpu/dnnl_conv.h"

#include <dnnl.hpp>
#include <vector>

#include "runtime/core/error.h"

namespace phx::kernels {

using dnnl::memory;
using Tag = memory::format_tag;
using Dt = memory::data_type;

struct DnnlConv::Engine {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{eng};
};

// Everything one shape needs: the three primitives, the user-layout and primitive-layout
// weight buffers, and the reorders between them.
struct DnnlConv::Prims {
  memory::desc userW;  // OHWI, as the model stores it
  dnnl::convolution_forward::primitive_desc fwdPd;
  dnnl::convolution_backward_data::primitive_desc bwdDataPd;
  dnnl::convolution_backward_weights::primitive_desc bwdWPd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data bwdData;
  dnnl::convolution_backward_weights bwdW;
  // Weights in the layouts the primitives want (own buffers) and the user-side wrappers.
  memory fwdW, bwdDataW, bwdWDiff, userWIn, userWOut;
  memory src, dst, bias, diffSrc, diffDst, diffBias;
  dnnl::reorder toFwdW, toBwdDataW, fromBwdW;  // empty when the layouts already agree
  std::vector<float> biasScratch;
};

DnnlConv::DnnlConv() : eng_(std::make_unique<Engine>()) {}
DnnlConv::~DnnlConv() = default;

DnnlConv::Prims& DnnlConv::prims(const ConvShape& s) {
  const auto key = std::make_tuple(s.batch, s.height, s.width, s.cin, s.cout, s.kernel);
  auto it = cache_.find(key);
  if (it != cache_.end()) return *it->second;
  try {
    const dnnl::engine& e = eng_->eng;
    const memory::dim N = s.batch, H = s.height, W = s.width, C = s.cin, O = s.cout,
                      K = s.kernel, P = s.pad();
    const memory::dims strides{1, 1}, pad{P, P};
    const memory::desc srcMd({N, C, H, W}, Dt::f32, Tag::nhwc);
    const memory::desc dstMd({N, O, H, W}, Dt::f32, Tag::nhwc);
    const memory::desc anyW({O, C, K, K}, Dt::f32, Tag::any);
    const memory::desc biasMd({O}, Dt::f32, Tag::x);
    auto p = std::make_unique<Prims>();
    p->userW = memory::desc({O, C, K, K}, Dt::f32, Tag::ohwi);
#if DNNL_VERSION_MAJOR >= 3
    // oneDNN 3 builds primitive descriptors from the engine and memory descriptors directly.
    p->fwdPd = dnnl::convolution_forward::primitive_desc(
        e, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, srcMd, anyW,
        biasMd, dstMd, strides, pad, pad);
    p->bwdDataPd = dnnl::convolution_backward_data::primitive_desc(
        e, dnnl::algorithm::convolution_direct, srcMd, anyW, dstMd, strides, pad, pad, p->fwdPd);
    p->bwdWPd = dnnl::convolution_backward_weights::primitive_desc(
        e, dnnl::algorithm::convolution_direct, srcMd, anyW, biasMd, dstMd, strides, pad, pad,
        p->fwdPd);
#else
    // oneDNN 2: an operation descriptor first, then its primitive descriptor.
    p->fwdPd = dnnl::convolution_forward::primitive_desc(
        dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training,
                                        dnnl::algorithm::convolution_direct, srcMd, anyW, biasMd,
                                        dstMd, strides, pad, pad),
        e);
    p->bwdDataPd = dnnl::convolution_backward_data::primitive_desc(
        dnnl::convolution_backward_data::desc(dnnl::algorithm::convolution_direct, srcMd, anyW,
                                              dstMd, strides, pad, pad),
        e, p->fwdPd);
    p->bwdWPd = dnnl::convolution_backward_weights::primitive_desc(
        dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, srcMd,
                                                 anyW, biasMd, dstMd, strides, pad, pad),
        e, p->fwdPd);
#endif
    p->fwd = dnnl::convolution_forward(p->fwdPd);
    p->bwdData = dnnl::convolution_backward_data(p->bwdDataPd);
    p->bwdW = dnnl::convolution_backward_weights(p->bwdWPd);
    p->fwdW = memory(p->fwdPd.weights_desc(), e);
    p->bwdDataW = memory(p->bwdDataPd.weights_desc(), e);
    p->bwdWDiff = memory(p->bwdWPd.diff_weights_desc(), e);
    p->userWIn = memory(p->userW, e, nullptr);
    p->userWOut = memory(p->userW, e, nullptr);
    p->src = memory(srcMd, e, nullptr);
    p->dst = memory(dstMd, e, nullptr);
    p->bias = memory(biasMd, e, nullptr);
    p->diffSrc = memory(srcMd, e, nullptr);
    p->diffDst = memory(dstMd, e, nullptr);
    p->diffBias = memory(biasMd, e, nullptr);
    if (p->fwdPd.weights_desc() != p->userW) p->toFwdW = dnnl::reorder(p->userWIn, p->fwdW);
    if (p->bwdDataPd.weights_desc() != p->userW)
      p->toBwdDataW = dnnl::reorder(p->userWIn, p->bwdDataW);
    if (p->bwdWPd.diff_weights_desc() != p->userW)
      p->fromBwdW = dnnl::reorder(p->bwdWDiff, p->userWOut);
    p->biasScratch.resize(s.cout);
    return *cache_.emplace(key, std::move(p)).first->second;
  } catch (const dnnl::error& err) {
    detail::throwLibrary("oneDNN", __FILE__, __LINE__,
                         detail::concat("convolution primitives for ", s.batch, "x", s.height, "x",
                                        s.width, "x", s.cin, " -> ", s.cout, ": ", err.what()));
  }
}

void DnnlConv::forward(const ConvShape& s, const float* x, const float* w, const float* bias,
                       float* y) {
  Prims& p = prims(s);
  dnnl::stream& st = eng_->stream;
  p.userWIn.set_data_handle(const_cast<float*>(w));
  memory wm = p.userWIn;
  if (p.toFwdW) {
    p.toFwdW.execute(st, p.userWIn, p.fwdW);
    wm = p.fwdW;
  }
  p.src.set_data_handle(const_cast<float*>(x));
  p.dst.set_data_handle(y);
  if (bias) {
    p.bias.set_data_handle(const_cast<float*>(bias));
  } else {
    std::fill(p.biasScratch.begin(), p.biasScratch.end(), 0.0f);
    p.bias.set_data_handle(p.biasScratch.data());
  }
  p.fwd.execute(st, {{DNNL_ARG_SRC, p.src},
                     {DNNL_ARG_WEIGHTS, wm},
                     {DNNL_ARG_BIAS, p.bias},
                     {DNNL_ARG_DST, p.dst}});
  st.wait();
}

void DnnlConv::backwardData(const ConvShape& s, const float* dy, const float* w, float* dx) {
  Prims& p = prims(s);
  dnnl::stream& st = eng_->stream;
  p.userWIn.set_data_handle(const_cast<float*>(w));
  memory wm = p.userWIn;
  if (p.toBwdDataW) {
    p.toBwdDataW.execute(st, p.userWIn, p.bwdDataW);
    wm = p.bwdDataW;
  }
  p.diffDst.set_data_handle(const_cast<float*>(dy));
  p.diffSrc.set_data_handle(dx);
  p.bwdData.execute(st, {{DNNL_ARG_DIFF_DST, p.diffDst},
                         {DNNL_ARG_WEIGHTS, wm},
                         {DNNL_ARG_DIFF_SRC, p.diffSrc}});
  st.wait();
}

void DnnlConv::backwardWeights(const ConvShape& s, const float* x, const float* dy, float* dw,
                               float* dbias) {
  Prims& p = prims(s);
  dnnl::stream& st = eng_->stream;
  p.src.set_data_handle(const_cast<float*>(x));
  p.diffDst.set_data_handle(const_cast<float*>(dy));
  p.diffBias.set_data_handle(dbias ? dbias : p.biasScratch.data());
  p.userWOut.set_data_handle(dw);
  const bool direct = !p.fromBwdW;
  p.bwdW.execute(st, {{DNNL_ARG_SRC, p.src},
                      {DNNL_ARG_DIFF_DST, p.diffDst},
                      {DNNL_ARG_DIFF_WEIGHTS, direct ? p.userWOut : p.bwdWDiff},
                      {DNNL_ARG_DIFF_BIAS, p.diffBias}});
  if (!direct) p.fromBwdW.execute(st, p.bwdWDiff, p.userWOut);
  st.wait();
}

std::string DnnlConv::implementation(const ConvShape& s) {
  Prims& p = prims(s);
  return std::string(p.fwdPd.impl_info_str()) + " / " + p.bwdDataPd.impl_info_str() + " / " +
         p.bwdWPd.impl_info_str();
}

}  // namespace phx::kernels
