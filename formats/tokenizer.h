/* Text <-> token ids for the vocabularies in struct lmp_vocab: SentencePiece-style BPE
 * (llama2.c tokenizer.bin, GGUF "llama", HF tokenizer.json with byte fallback) and
 * byte-level BPE (GPT-2 / Llama-3 / SmolLM2, pre-tokenizer regex through PCRE2).
 * Encoding matches llama.cpp's tokenizers. */
#ifndef LMP_TOKENIZER_H
#define LMP_TOKENIZER_H

#include "model.h"

struct lmp_tokenizer; /* opaque: lookup tables built from a vocab */

/* Builds lookup tables; the vocab must outlive the tokenizer. */
enum lmp_status lmp_tok_create(const struct lmp_vocab *v, struct lmp_tokenizer **out,
                               struct lmp_err *err);
void lmp_tok_free(struct lmp_tokenizer *t); /* accepts NULL */

/* Encodes len bytes of text. add_bos: prepend v->bos (if the vocab has one).
 * *ids is malloc'd (caller frees), *n_ids its length. Invalid UTF-8 is encoded
 * through byte fallback / byte-level tokens, never an error.
 * CONTROL and USER tokens whose text occurs literally are emitted as one id (leftmost,
 * longest match first); the text between them is encoded on its own (SPM: each such
 * fragment gets the dummy-prefix space, as llama.cpp does). Thread-safe: t is read-only. */
enum lmp_status lmp_tok_encode(const struct lmp_tokenizer *t, const char *text, size_t len,
                               int add_bos, int32_t **ids, int64_t *n_ids, struct lmp_err *err);

/* Text of one token for output: SPM "▁" -> ' ', "<0xNN>" -> that byte, byte-level BPE
 * unicode -> bytes, control tokens -> "" . prev is the previous token id or -1 (the
 * leading space after BOS is dropped, as llama2.c and llama.cpp do).
 * Unknown tokens -> "" too, user-defined tokens -> their text as is.
 * Writes at most cap bytes to buf, returns the number of bytes (not NUL terminated). */
size_t lmp_tok_decode(const struct lmp_tokenizer *t, int prev, int id, char *buf, size_t cap);

/* Longest piece lmp_tok_decode can return: a buffer of this size never truncates. */
size_t lmp_tok_max_piece(const struct lmp_tokenizer *t);

#endif
