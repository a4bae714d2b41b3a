"""Answer "what goes with this image?" for a catalog image or any image file, and "what next
for this user?" from their engagement history. No Dagster here.

A catalog `image_id` uses its stored embedding; a file path (or fsspec URL) is decoded with
the ingestion decoder and embedded on the fly by the current encoder. The candidates are the
pipeline's (`retrieval.candidates`: index neighbours merged with popular images), `pool` of
them; the champion reranker scores them, and the top `k` come back with their URIs. Only a champion serves: a challenger that passed `challenger_not_worse` when it was
promoted (not worse than retrieval or the champion before it), or one promoted by hand.
Before there is one, the candidates stay in retrieval order, because an unchecked
challenger may rank worse than no reranker at all.

For a user, the history is their latest H distinct engaged images; the candidates are the
neighbours of the most recent ones merged with popular images (never an image already in
the history), and the champion reads the whole history as soft tokens.
"""

from __future__ import annotations

import hashlib

import numpy as np

from assets.evaluation.promotion import CHALLENGER, CHAMPION
from assets.ingestion.batch import image_id_of, read_bytes
from assets.ingestion.decode import DecodePolicy, Quarantined, decode_image
from assets.reranker.aligned import aligned_catalog, engagement_prior, rows_of
from assets.reranker.histories import HistoryConfig, serving_history
from assets.retrieval.candidates import Queries, catalog_candidates
from assets.retrieval.index_store import load_state
from assets.store.files import Home
from assets.store.models import pointers, version_dir
from models.embed import embed_pixels
from models.encoder import ImageEncoder
from models.rerankers import load_reranker
from models.scoring import CANDIDATES, score_candidates


def serving_version(home: Home) -> str | None:
    """The champion reranker's version, or None before one was promoted."""
    return pointers(home, CHAMPION)["current"]


def query_embedding(home: Home, query: str, frame, emb: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(embedding (d,), image_id or None) for a catalog image id or an image file; a file whose
    bytes are a catalog image is that image (so it is not recommended to itself)."""
    ids = frame["image_id"].to_list()
    if query in ids:
        return emb[ids.index(query)], query
    try:
        data = read_bytes(query)
    except OSError as e:
        raise ValueError(f"{query!r} is neither a catalog image_id nor a readable image file: {e}") from e
    same = image_id_of(hashlib.sha256(data).hexdigest())
    if same in ids:
        return emb[ids.index(same)], same
    try:
        pixels, _ = decode_image(data, DecodePolicy())  # the encoder resizes to its own input size
    except Quarantined as q:
        raise ValueError(f"{query!r} is not an image lensless can read ({q.reason}: {q.detail})") from q
    # the encoder whose vectors the index holds (during a re-embed the current one may be newer)
    encoder = ImageEncoder.from_checkpoint(version_dir(home, "image_encoder", load_state(home)["encoder_version"]))
    return embed_pixels(encoder, pixels[None])[0], None


def recommend(home: Home, query: str, k: int = 10, pool: int = CANDIDATES, rerank: bool = True,
              version: str | None = None) -> list[dict]:
    """Top-k recommendations: [{"image_id", "uri", "score"}], best first.

    With `rerank`, the reranker `version` scores the candidates (default: the champion; none
    yet: retrieval order)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    frame, emb = aligned_catalog(home)
    vec, own_id = query_embedding(home, query, frame, emb)
    ids, uris = frame["image_id"].to_list(), frame["uri"].to_list()
    k = min(k, frame.height - (own_id is not None))  # never more than the catalog holds
    pool = min(max(pool, k), frame.height - (own_id is not None))
    asked = Queries([vec[None].astype(np.float32)], [{ids.index(own_id)} if own_id is not None else set()])
    found = catalog_candidates(home, frame, emb, asked, pool)
    cand_rows = found.rows[0]
    keep = [(float(s), int(r)) for s, r in zip(found.scores[0], cand_rows, strict=True)]
    version = (version or serving_version(home)) if rerank else None
    if version is not None and len(cand_rows):
        scorer = load_reranker(version_dir(home, CHALLENGER, version))
        out = score_candidates(scorer, emb, [0], cand_rows[None], query_features=vec[None],
                               prior=engagement_prior(home, frame))[0]
        ranked = [(float(out[j]), int(cand_rows[j])) for j in np.argsort(-out, kind="stable")]
    else:
        ranked = keep
    return [{"image_id": ids[r], "uri": uris[r], "score": s} for s, r in ranked[:k]]


def recommend_for_user(home: Home, user_id: str, k: int = 10, pool: int = CANDIDATES, rerank: bool = True,
                       version: str | None = None, history_length: int = HistoryConfig.length) -> list[dict]:
    """Top-k recommendations for `user_id` from their history: [{"image_id", "uri", "score"}].
    The model reads the latest `history_length` engaged images; no image the user ever
    engaged with is recommended."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    frame, emb = aligned_catalog(home)
    pos, ids, uris = rows_of(frame), frame["image_id"].to_list(), frame["uri"].to_list()
    engaged = [pos[i] for i in serving_history(home, user_id, length=None) if i in pos]
    if not engaged:
        raise ValueError(f"none of user {user_id!r}'s engaged images is in the index; rebuild it (lensless run)")
    history = np.array(engaged[-history_length:], dtype=np.int64)
    pool = min(max(pool, k), frame.height - len(engaged))
    queries = Queries.histories(emb, [history], HistoryConfig.recent)
    queries = Queries(queries.anchors, [set(engaged)])  # seen before the window too: not "what next"
    found = catalog_candidates(home, frame, emb, queries, pool, task="users")
    cand_rows = found.rows[0]
    ranked = [(float(s), int(r)) for s, r in zip(found.scores[0], cand_rows, strict=True)]
    version = (version or serving_version(home)) if rerank else None
    if version is not None and len(cand_rows):
        scorer = load_reranker(version_dir(home, CHALLENGER, version))
        out = score_candidates(scorer, emb, history[None], cand_rows[None], prior=engagement_prior(home, frame))[0]
        ranked = [(float(out[j]), int(cand_rows[j])) for j in np.argsort(-out, kind="stable")]
    return [{"image_id": ids[r], "uri": uris[r], "score": s} for s, r in ranked[:k]]
