/* GPTQ checkpoints in the AutoGPTQ / GPTQModel safetensors layout: export of a packed
 * lmp_model to a Hugging Face directory that transformers / vLLM / GPTQModel load, and
 * import of such a directory back into packed tensors.
 *
 * Per quantized linear (HF name P = "model.layers.N.self_attn.q_proj", ... "mlp.down_proj"),
 * with in = input features, out = output features, b bits, G groups of `group` inputs:
 *   P.qweight  I32 [in*b/32, out]  codes packed along the input dimension: column o of
 *              qweight is the little-endian bit stream of the codes of output o in natural
 *              input order, b bits each (for b = 2, 4, 8 that is 32/b codes per word, code
 *              j of a word at bits j*b; for b = 3 the stream crosses words, which is the
 *              reference's 3-word interleave of 32 codes)
 *   P.qzeros   I32 [G, out*b/32]   zero points packed the same way along the output
 *              dimension; checkpoint_format "gptq" (v1) stores zero - 1 (masked to b bits),
 *              "gptq_v2" the zero itself
 *   P.scales   F16 [G, out]
 *   P.g_idx    I32 [in]            group of each input column: i / group in natural order;
 *              with an act-order permutation perm (storage column j = input perm[j]),
 *              g_idx[perm[j]] = j / group
 *   w[o][i] = scales[g][o] * (q[o][i] - zero[g][o]),  g = g_idx[i]
 * Q and K rows (and biases) are in Hugging Face's rotate-half order (rows permuted from ours,
 * which is exact for packed rows: codes, scales and zeros move together). Embeddings, norms,
 * biases and the head are dense tensors (model.embed_tokens.weight, ...). The directory also
 * holds config.json (with quantization_config), quantize_config.json, tokenizer.json and
 * tokenizer_config.json.
 *
 * A zero point of 0 cannot be stored in v1 ("zero - 1" wraps to 2^b - 1, which v1 loaders
 * read back as 2^b): a model with one is written as gptq_v2 and the report says so. */
#ifndef LMP_GPTQ_ST_H
#define LMP_GPTQ_ST_H

#include "model.h"

struct lmp_gptq_export_opts {
    int dense_type; /* storage of the non-quantized tensors: LMP_TYPE_F32, F16, BF16, or -1 to
                       keep each tensor's type (F32 stays F32: exact round trip) */
};

struct lmp_gptq_export_report {
    int bits, group; /* group -1: per output channel */
    int sym, desc_act;
    int v2;          /* written as checkpoint_format gptq_v2 (some zero point is 0) */
    int n_linear;    /* quantized linear layers written */
};

/* Writes dir (which must not exist, or be an empty directory) through dir.tmp.<pid> renamed
 * into place. Every linear layer of every block must be packed with one bits / group / sym
 * setting, the layer shapes uniform (Hugging Face configs have no per-layer sizes), integer
 * zero points, and each matrix's in and out features multiples of 32 (whole int32 words in
 * both packings); anything else is LMP_ERR_UNSUPPORTED with the reason. rep may be NULL. */
enum lmp_status lmp_ckpt_save_gptq_dir(const struct lmp_model *m, const char *dir,
                                       const struct lmp_gptq_export_opts *o,
                                       struct lmp_gptq_export_report *rep, struct lmp_err *err);

/* 1 when dir holds quantize_config.json, or a config.json whose quantization_config has
 * quant_method "gptq". */
int lmp_gptq_is_dir(const char *dir);

/* Loads a GPTQ directory: quantized linears become packed tensors with the same codes,
 * scales and zero points (an act-order g_idx becomes our perm, columns of one group in
 * increasing input order); dense tensors become F32; Q/K rows are permuted to our
 * interleaved order. Config and tokenizer are read as the Hugging Face loader does. */
enum lmp_status lmp_ckpt_load_gptq_dir(const char *dir, struct lmp_model **out,
                                       struct lmp_err *err);

#endif
