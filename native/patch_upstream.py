"""Anchored one-line insertions into the llama.cpp sources vendored by llama-cpp-python.

Run by native/pop.cmake at configure time (stdlib only: it runs in the build's isolated env):

    python patch_upstream.py <llama-cpp-python source dir>

Every insertion names the text it must sit next to. An anchor must occur exactly once, or the build
stops naming the llama-cpp-python version these anchors were written for. Re-running is a no-op:
each inserted line ends with the marker and is not inserted twice. Files are rewritten through a
temporary file and a rename.
"""

from __future__ import annotations

import os
import sys
import tempfile

EXPECTED_UPSTREAM = "llama-cpp-python 0.3.36"
MARK = "// pop-local"

# shared graph code: the explicit expand of a pruned layer's query, attention output or experts is left out
# (this line guards the statement after it); they are then computed only if the layer's output is used
GUARD = "if (!pop_layer_pruned(*this, il)) // pop-local: pruned layers reach this only through their output"

# (file under vendor/llama.cpp/src, anchor with "@@" where the line goes, line to insert[, times the anchor occurs])
EDITS = [
    # graph parameters carry the ubatch's POP plan, and a graph is reused only for the same plan
    ("llama-graph.h",
     '#include "llama-adapter.h"\n@@',
     '#include "pop.h" // pop-local'),
    ("llama-graph.h",
     "    llm_graph_result * res;\n@@\n"
     "    // return true if the \"other\" params would result in a graph with the same topology",
     "    pop_graph_plan pop; // pop-local"),
    ("llama-graph.h",
     "        if (n_outputs != other.n_outputs) {\n            return false;\n        }\n@@",
     "        if (pop != other.pop) { return false; } // pop-local"),
    # per-context state
    ("llama-context.h",
     "struct llama_context {\n@@",
     "    pop_context_state pop; // pop-local: prefill-only pruning"),
    ("llama-context.cpp",
     "        /*.res         =*/ res,\n@@",
     "        /*.pop         =*/ pop_plan_for(pop, gtype, ubatch.n_tokens, n_outputs), // pop-local"),
    ("llama-context.cpp",
     "@@    llama_memory_context_ptr mctx;\n\n    while (true) {\n"
     "        mctx = memory->init_batch(*balloc, cparams.n_ubatch, output_all);",
     "    pop_context_prepare(pop, model); balloc->pop_split_by_output = pop_split_by_output(pop); // pop-local"),
    ("llama-context.cpp",
     "            // needs to happen before the graph is built\n            n_outputs = n_outputs_new;\n        }\n@@",
     "        pop_count_ubatch(pop, ctx_type_to_graph_type(cparams.ctx_type), ubatch.n_tokens, n_outputs); "
     "// pop-local"),
    # ubatches never mix tokens with and without requested outputs
    ("llama-batch.h",
     "    llama_ubatch split_seq(uint32_t n_ubatch);\n@@",
     "    bool pop_split_by_output = false; // pop-local: cut ubatches where the output flag changes"),
    ("llama-batch.cpp",
     "        if (idxs.size() >= n_ubatch) {\n            break;\n        }\n@@    }\n\n"
     "    return ubatch_add(idxs, idxs.size(), false);",
     "        if (pop_split_by_output && output[cur_idx] != output[idxs[0]]) { break; } // pop-local"),
    ("llama-batch.cpp",
     "    llama_seq_id last_seq_id = -1;\n@@",
     "    int pop_mode = -1; seq_set_t pop_rejected; // pop-local"),
    ("llama-batch.cpp",
     "@@        if (add) {\n            cur_seq_set.push_back(seq_set[i]);",
     "        if (pop_split_by_output && add) { "
     "if ((pop_rejected & seq_set[i]).any() || (pop_mode >= 0 && output[i] != pop_mode)) "
     "{ pop_rejected |= seq_set[i]; add = false; } else { pop_mode = output[i]; } } // pop-local"),
    ("llama-batch.cpp",
     "            if (cur_idx[s] >= (int32_t) seq_set_map[cur_seq_set[s]].size()) {\n"
     "                can_expand = false;\n                break;\n            }\n@@",
     "            if (pop_split_by_output && output[seq_set_map[cur_seq_set[s]][cur_idx[s]]] != pop_mode) "
     "{ can_expand = false; break; } // pop-local"),
    # graphs know their plan (so the shared Q/K/V builder can swap in fitted K/V projections) and track the
    # residual stream of a pruned graph
    ("llama-graph.h",
     "    llm_graph_result * res;\n@@\n    ggml_context * ctx0 = nullptr;",
     "    const pop_graph_plan pop_plan; // pop-local: this graph's POP plan\n"
     "    mutable pop_graph_stream pop_stream; // pop-local: the residual stream while a pruned graph is built"),
    ("llama-graph.cpp",
     "    res              (params.res),\n@@    ctx0             (res->get_ctx()),",
     "    pop_plan         (params.pop), // pop-local"),
    ("llama-graph.cpp",
     "        Kcur = build_lora_mm(layer.wk, cur, layer.wk_s);\n@@",
     "        Kcur = pop_fitted_proj(*this, cur, Kcur, false, il); // pop-local"),
    ("llama-graph.cpp",
     "        Vcur = build_lora_mm(layer.wv, cur, layer.wv_s);\n@@",
     "        Vcur = pop_fitted_proj(*this, cur, Vcur, true, il); // pop-local"),
    # model load creates the optional fitted K/V tensors (blk.N.attn_k.pop / attn_v.pop)
    ("llama-model.cpp",
     "@@    ml.done_getting_tensors();\n\n    if (per_layer_tok_embd",
     "    pop_create_fitted_tensors(*this, [&](int il, bool is_v, int64_t n_in, int64_t n_out) { return create_tensor("
     "LLM_TN(arch)(is_v ? LLM_TENSOR_ATTN_V : LLM_TENSOR_ATTN_K, \"pop\", il), {n_in, n_out}, TENSOR_NOT_REQUIRED); "
     "}); // pop-local"),
    # model load reads and validates the pop.* keys
    ("llama.cpp",
     "        model->load_stats(ml);\n@@",
     "        pop_model_load(*model, ml); // pop-local"),
    # every named tensor passes through cb(): a pruned layer's "l_out" becomes a view of its input there
    ("llama-graph.cpp",
     "void llm_graph_context::cb(ggml_tensor * cur, const char * name, int il) const {\n"
     "    if (cb_func) {\n        cb_func(ubatch, cur, name, il);\n    }\n@@}",
     "    pop_on_named_tensor(*this, cur, name, il); // pop-local"),
    # a pruned graph keeps every input tensor (one read only by pruned layers would be left unallocated,
    # and llama.cpp sets every input before each compute)
    ("llama-context.cpp",
     "        gf = model.build_graph(gparams);\n@@",
     "        pop_graph_built(gparams.pop, res->get_ctx(), gf); // pop-local"),
    # build_attn (kv, k and k_dsa caches; iswa and k_iswa caches): a pruned layer's query is not expanded;
    # its K/V are stored as in the full graph
    ("llama-graph.cpp",
     "    // expand k later to enable rope fusion which directly writes into k-v cache\n"
     "@@    ggml_build_forward_expand(gf, q_cur);",
     "    " + GUARD, 3),
    ("llama-graph.cpp",
     "    // by doing so, the number of splits in the graph is reduced\n"
     "@@    ggml_build_forward_expand(gf, q_cur);\n\n    if (k_cur) {",
     "    " + GUARD, 2),
    # build_attn_mha: the attention output
    ("llama-graph.cpp",
     "            ggml_backend_sched_set_tensor_backend(sched, cur, backend_cpu);\n        }\n    }\n\n"
     "@@    ggml_build_forward_expand(gf, cur);\n\n    return cur;\n}",
     "    " + GUARD),
    # build_moe_ffn: router weights, experts, their views and their sum
    ("llama-graph.cpp",
     "    //call early so that topk-moe can be used\n@@    ggml_build_forward_expand(gf, weights);",
     "    " + GUARD),
    ("llama-graph.cpp",
     "@@    ggml_build_forward_expand(gf, experts);\n\n    ggml_tensor * cur_experts[LLAMA_MAX_EXPERTS]",
     "    " + GUARD),
    ("llama-graph.cpp",
     "experts->nb[2], i*experts->nb[1]);\n\n@@        ggml_build_forward_expand(gf, cur_experts[i]);",
     "        " + GUARD),
    ("llama-graph.cpp",
     "        moe_out = ggml_add(ctx0, moe_out, cur_experts[i]);\n\n@@        ggml_build_forward_expand(gf, moe_out);",
     "        " + GUARD),
    # Vulkan builds: VK_EXT_layer_settings (used only to turn on validation-layer settings) is newer than
    # the Vulkan headers of Debian 12 (1.3.239); without it the instance is created without that chain
    ("../ggml/src/ggml-vulkan/ggml-vulkan.cpp",
     "@@    VkBool32 enable_best_practice = layer_settings;\n",
     "#ifdef VK_EXT_LAYER_SETTINGS_EXTENSION_NAME // pop-local"),
    ("../ggml/src/ggml-vulkan/ggml-vulkan.cpp",
     "    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, layers, extensions, "
     "&layer_setting_info);\n@@",
     "#else // pop-local\n"
     "    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, layers, extensions); "
     "// pop-local\n"
     "#endif // pop-local"),
    # RPC client connections get a receive/send timeout (seconds in POP_LOCAL_RPC_TIMEOUT, set by
    # pop_local/runtime/rpc.py), so a server that stops answering is an error instead of a hang
    ("../ggml/src/ggml-rpc/transport.cpp",
     "        GGML_LOG_ERROR(\"Failed to set TCP_NODELAY\\n\");\n        return nullptr;\n    }\n@@"
     "    struct sockaddr_in addr;\n    addr.sin_family = AF_INET;",
     "#ifndef _WIN32 // pop-local\n"
     "    if (const char * pop_t = std::getenv(\"POP_LOCAL_RPC_TIMEOUT\")) { struct timeval pop_tv = {atoi(pop_t), 0}; "
     "setsockopt(sockfd, SOL_SOCKET, SO_RCVTIMEO, &pop_tv, sizeof(pop_tv)); "
     "setsockopt(sockfd, SOL_SOCKET, SO_SNDTIMEO, &pop_tv, sizeof(pop_tv)); } // pop-local\n"
     "#endif // pop-local"),
]


class PatchError(RuntimeError):
    pass


def apply_edit(text: str, anchor: str, line: str, where: str, times: int = 1) -> str:
    """Return text with `line` inserted at the anchor's "@@" (which must occur `times` times); unchanged
    if already there."""
    before, sep, after = anchor.partition("@@")
    if not sep:
        raise PatchError(f"{where}: anchor has no insertion point")
    patched = before + line + "\n" + after
    if text.count(patched) == times:
        return text
    count = text.count(before + after)
    if count != times:
        raise PatchError(
            f"{where}: anchor found {count} times (expected {times}). pop-local's patch is written for "
            f"{EXPECTED_UPSTREAM}; the sources being built differ.\nanchor:\n{before + after}"
        )
    return text.replace(before + after, patched)


def write_atomic(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".pop-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def patch_tree(source_dir: str) -> int:
    """Apply every edit under source_dir; return how many files changed."""
    src = os.path.join(source_dir, "vendor", "llama.cpp", "src")
    if not os.path.isdir(src):
        raise PatchError(f"{src} not found: expected the {EXPECTED_UPSTREAM} source tree")
    texts: dict[str, str] = {}
    for rel, anchor, line, *times in EDITS:
        path = os.path.join(src, rel)
        if path not in texts:
            try:
                with open(path, encoding="utf-8", newline="") as f:
                    texts[path] = f.read()
            except FileNotFoundError:
                raise PatchError(f"{rel} not found: expected the {EXPECTED_UPSTREAM} source tree") from None
        texts[path] = apply_edit(texts[path], anchor, line, rel, *times)
    changed = 0
    for path, text in texts.items():
        with open(path, encoding="utf-8", newline="") as f:
            if f.read() == text:
                continue
        write_atomic(path, text)
        changed += 1
    return changed


ARCHITECTURES_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pop_local", "format",
                                "architectures.py")


def architectures_inc() -> str:
    """pop_architectures.inc: the names in pop_local/format/architectures.py (the one list) as a C++ array."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pop_local_architectures", ARCHITECTURES_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while the class is created
    spec.loader.exec_module(module)
    names = ", ".join(f'"{n}"' for n in module.NAMES)
    return ("// generated by native/patch_upstream.py from pop_local/format/architectures.py; do not edit\n"
            f"static const char * const POP_ARCHITECTURES[] = {{ {names} }};\n")


def write_architectures(source_dir: str) -> bool:
    """Write the list next to pop.cpp when it changed (an unchanged file keeps its mtime); True if written."""
    path = os.path.join(source_dir, "vendor", "llama.cpp", "src", "pop_architectures.inc")
    text = architectures_inc()
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return False
    write_atomic(path, text)
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: patch_upstream.py <llama-cpp-python source dir>", file=sys.stderr)
        return 2
    try:
        changed = patch_tree(argv[1])
        write_architectures(argv[1])
    except PatchError as e:
        print(f"pop-local: cannot patch llama.cpp: {e}", file=sys.stderr)
        return 1
    print(f"pop-local: llama.cpp sources patched ({changed} files changed, {len(EDITS)} insertions checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
