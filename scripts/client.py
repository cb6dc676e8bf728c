"""The one asynchronous client of a node's HTTP API, for every tool that talks to nodes.

``NodeClient`` holds one aiohttp session (keep-alive, bounded connections) to one node or to
several nodes of one cluster, and offers the API as methods: ``submit`` (signed transactions as
one msgpack batch body), ``post_tx_body`` (a batch body already encoded, sent without another
copy: the load generator prebuilds its bodies), ``wait_committed`` (the ``GET /tx/{id}?wait_ms=``
long poll), ``status``, ``consortium`` (the keys a node publishes in its status), ``block`` and
``blocks`` pages (also in the light forms ``txs=ids`` and ``txs=0``), and ``poll_tx``, the one
long poll ``wait_committed`` is made of. ``at`` gives a client of another node over the same
connection pool, so a tool that talks to every node of a cluster keeps one pool.

Every answer is read with a bound on its size and every request with a timeout. 503 (the node
is overloaded: it says for how long in Retry-After), 502/504 and connection errors are retried
with jittered exponential backoff within a bounded number of attempts and the caller's
deadline; given several URLs, the client fails over to the next node on each of them.

Fail-over: a node that refused a connection, did not answer within the client's timeout
(``timeout_s``, default :data:`DEFAULT_TIMEOUT_S`: the longest a client ever waits on one node
for one answer), or answered 503, is *suspect* in the client's :class:`NodeHealth` for a while
(a backoff doubling from :data:`SUSPECT_MIN_S` to :data:`SUSPECT_MAX_S`, at least the node's
Retry-After); requests go to the next node that is not suspect, and come back once the
suspicion ends. The health table is shared by every client ``at`` derives, so the concurrent
requests of a load generator learn of a dead node from the first one that met it instead of
each waiting on it. Resubmitting to another node is harmless:
a transaction's id is the hash of its signed header, so a node that already has it (pending or
committed) accepts it again as the same transaction, never as a second one. Any other answer is
final: an error answer surfaces as :class:`NodeError` with the node's ``error`` and ``detail``;
it carries the node's last answer, or the transport error that left none, so a caller that
counts failures by kind (the load generator, with ``NO_RETRY``) can tell them apart. Submitting
is idempotent on the node, so a retry after a lost answer is safe.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from node.api import msgpack_tx_body
from node.crypto import ReplicaKeys
from node.ledger import ClientRegistry, TxEnvelope
from scripts.credentials import reader_http

MSGPACK: Final = "application/msgpack"
DEFAULT_TIMEOUT_S: Final = 10.0
"""Bound of one request to one node (a long poll gets its wait on top): the longest a client
waits on a node that does not answer before it moves to the next."""
CONNECT_TIMEOUT_S: Final = 3.0
"""Bound of opening a connection (a dead host, a full accept queue) within the request's."""
SUSPECT_MIN_S: Final = 0.5
SUSPECT_MAX_S: Final = 5.0
"""How long a node that failed stays suspect: doubling per consecutive failure, within these."""
_MAX_STRIKES: Final = 1 + math.ceil(math.log2(SUSPECT_MAX_S / SUSPECT_MIN_S))
"""The strike at which the doubling reaches SUSPECT_MAX_S; counting further changes nothing."""
DEFAULT_MAX_BODY_BYTES: Final = 64 << 20
DEFAULT_CONNECTIONS: Final = 32
"""Connections of a client's pool (0: no limit, as aiohttp counts)."""
WAIT_POLL_MS: Final = 10_000
"""Length of one GET /tx/{id}?wait_ms= (the node caps it at its tx_wait_max_ms)."""
TXS_FORMS: Final = ("1", "ids", "0")
"""GET /blocks ``txs=``: whole transactions, their ids only, or headers only."""
_RETRYABLE: Final = frozenset({502, 503, 504})
_ERROR_CHARS: Final = 300


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 8
    """Tries of one request (503, 502/504, connection errors) before giving up."""
    backoff_min_s: float = 0.1
    backoff_max_s: float = 3.0
    retry_after_max_s: float = 10.0
    """A node's Retry-After is honoured up to this long (and never past the deadline)."""

    def delay(self, retry: int, retry_after_s: float | None) -> float:
        backoff = min(self.backoff_max_s, self.backoff_min_s * 2.0**retry)
        backoff *= random.uniform(0.5, 1.0)
        if retry_after_s is not None:
            backoff = max(backoff, min(retry_after_s, self.retry_after_max_s))
        return backoff


NO_RETRY: Final = RetryPolicy(attempts=1)


class NodeHealth:
    """Which nodes answer, as the requests of one client (and those ``at`` derives) found
    out: a node that failed is suspect until a deadline, and requests avoid it meanwhile."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}
        self._strikes: dict[str, int] = {}

    def suspect(self, url: str) -> bool:
        return self._until.get(url, 0.0) > self._clock()

    def failed(self, url: str, retry_after_s: float | None = None) -> None:
        """``url`` did not answer (or answered 503): suspect it for a while, doubling per
        strike; a Retry-After is held at least as long (up to the bound).

        Holding a 503's Retry-After alone (no doubling) was tried and measured side by side, 90 s
        at 3,000 tx/s offered, two runs each: 3.4 times the 503s (21,500 against 6,300-6,900), 2
        and 3 view changes against 0 and 1, 1,020-1,118 tx/s against 1,126-1,248. Refusing costs
        an overloaded node CPU too; the doubling keeps the refused load away longer."""
        # Capped where the hold reaches SUSPECT_MAX_S: a node failing for minutes under load
        # strikes thousands of times, and 2.0 ** 1024 overflows a float.
        strikes = min(self._strikes.get(url, 0) + 1, _MAX_STRIKES)
        self._strikes[url] = strikes
        hold = min(SUSPECT_MAX_S, SUSPECT_MIN_S * 2.0 ** (strikes - 1))
        if retry_after_s is not None:
            hold = max(hold, min(retry_after_s, SUSPECT_MAX_S))
        self._until[url] = self._clock() + hold

    def answered(self, url: str) -> None:
        """``url`` gave a useful answer: it is healthy again."""
        if url in self._until:
            del self._until[url]
            self._strikes.pop(url, None)

    def choose(self, urls: Sequence[str], start: int) -> int:
        """Index of the first node from ``start`` on (wrapping) that is not suspect; if all
        are, the one whose suspicion ends first."""
        n = len(urls)
        order = [(start + k) % n for k in range(n)]
        for i in order:
            if not self.suspect(urls[i]):
                return i
        return min(order, key=lambda i: self._until.get(urls[i], 0.0))

    def wait_s(self, urls: Sequence[str]) -> float:
        """How long until one of ``urls`` is not suspect any more (0 if one is not now)."""
        now = self._clock()
        return max(0.0, min(self._until.get(u, 0.0) for u in urls) - now) if urls else 0.0


class NodeError(RuntimeError):
    """A node did not give a useful answer: its error answer, or why there was none."""

    def __init__(
        self,
        url: str,
        message: str,
        *,
        status: int | None = None,
        error: str | None = None,
        answer: Answer | None = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.error = error
        """The ``error: detail`` of the node's JSON error body, if it sent one."""
        self.answer = answer
        """The node's (last) answer that was not the one wanted; None if there was none."""

    @property
    def transport_error(self) -> BaseException | None:
        """The exception that left no answer (a refused connection, a timeout...), if any."""
        cause = self.__cause__
        while isinstance(cause, NodeError):
            cause = cause.__cause__
        return cause


class Unreachable(NodeError):
    """No answer, or a gateway's (502/504): worth another try, perhaps at another node."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer of a node: status, parsed JSON body (None if none or not JSON)."""

    url: str
    """Base URL of the node that answered."""
    status: int
    doc: Any
    retry_after_s: float | None = None
    raw: bytes = b""

    @property
    def error_text(self) -> str:
        """``error: detail`` of a JSON error body; else the start of the body."""
        if isinstance(self.doc, dict):
            return ": ".join(str(self.doc[k]) for k in ("error", "detail") if self.doc.get(k))
        return self.raw[:_ERROR_CHARS].decode("utf-8", "replace").strip()


@dataclass(frozen=True, slots=True)
class Consortium:
    """What a chain is verified against: replica keys (certificates) and client keys (txs)."""

    replica_publics: tuple[bytes, ...]
    registry: ClientRegistry
    source: str
    """Where the keys came from (a config file, or the node itself)."""


def consortium_from_status(doc: object, url: str) -> Consortium:
    """Keys as a node publishes them in GET /status (weaker: the node vouches for itself)."""
    try:
        if not isinstance(doc, Mapping):
            raise TypeError("status is not a JSON object")
        cluster_id = doc.get("cluster_id", "")
        if not isinstance(cluster_id, str):
            raise TypeError("cluster_id is not a string")
        # Certificates are checked under the cluster id that every consensus signature binds.
        replicas = ReplicaKeys(
            [bytes.fromhex(r["public_key"]) for r in doc["replicas"]], cluster_id.encode()
        )
        registry = ClientRegistry(
            [(bytes.fromhex(c["public_key"]), str(c["hospital"])) for c in doc["clients"]]
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise NodeError(
            url, f"{url}/status does not publish the consortium's keys ({exc}); pass --config"
        ) from exc
    return Consortium(replicas, registry, source=f"{url}/status")


@dataclass(frozen=True, slots=True)
class BlocksPage:
    """One page of GET /blocks: block documents, the node's height, where the next starts."""

    blocks: list[Any]
    height: int | None
    next: int | None


async def read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole response body, refusing (ValueError) one larger than ``limit`` bytes."""
    if resp.content_length is not None:
        if resp.content_length > limit:
            raise ValueError(f"answer of {resp.content_length} bytes exceeds {limit}")
        return await resp.read()  # the parser reads no more than Content-Length
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise ValueError(f"answer exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: we keep to our own backoff
    return seconds if seconds is not None and seconds >= 0 else None


class _Attempts:
    """The retry budget of one logical request: attempts and the caller's deadline."""

    def __init__(self, client: NodeClient, deadline: float | None) -> None:
        self.client = client
        self.deadline = deadline
        self.policy = client.retry
        self.used = 0
        self.last_problem = ""
        self.last_answer: Answer | None = None
        self.last_error: NodeError | None = None

    async def again(
        self, problem: str, retry_after_s: float | None = None, at_once: bool = False
    ) -> bool:
        """Note a failed attempt; wait the backoff (none ``at_once``: another node is to be
        tried) and return True if another attempt is allowed."""
        self.used += 1
        self.last_problem = problem
        policy = self.policy
        if self.used >= policy.attempts or self.expired():
            return False
        delay = 0.0 if at_once else policy.delay(self.used - 1, retry_after_s)
        if self.deadline is not None:
            delay = min(delay, max(0.0, self.deadline - time.monotonic()))
        await self.client.sleep(delay)
        return not self.expired()

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def exhausted(self, message: str) -> NodeError:
        """The error once no attempt is left: with the last answer, from the last failure."""
        answer = self.last_answer
        error = NodeError(
            self.client.url,
            f"{message} after {self.used} attempt(s): {self.last_problem}",
            status=None if answer is None else answer.status,
            answer=answer,
        )
        error.__cause__ = self.last_error
        return error


class NodeClient:
    """Requests to one node, or to several with failover; use as ``async with`` (or pass
    a ``session`` the caller owns and closes)."""

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        retry: RetryPolicy = RetryPolicy(),
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        connections: int = DEFAULT_CONNECTIONS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        session: aiohttp.ClientSession | None = None,
        health: NodeHealth | None = None,
    ) -> None:
        listed = [urls] if isinstance(urls, str) else list(urls)
        self.urls = tuple(u.rstrip("/") for u in listed)
        if not self.urls:
            raise ValueError("NodeClient needs at least one node URL")
        self.retry = retry
        self.timeout_s = timeout_s
        self.max_body_bytes = max_body_bytes
        self.sleep = sleep
        self._connections = connections
        self._current = 0
        self._session = session
        self._owns_session = session is None
        self.health = NodeHealth() if health is None else health
        """Which nodes answer; shared with every client ``at`` derives."""

    async def __aenter__(self) -> NodeClient:
        if self._session is None:
            # The cluster's CA, client certificate and read tokens, if a tool named a cluster.
            self._session = reader_http().session(limit=self._connections, limit_per_host=0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The connection pool, for a tool that speaks another API over it (the admin API)."""
        if self._session is None:
            raise RuntimeError("NodeClient used outside `async with`")
        return self._session

    def at(
        self,
        urls: str | Sequence[str],
        *,
        retry: RetryPolicy | None = None,
        timeout_s: float | None = None,
        max_body_bytes: int | None = None,
    ) -> NodeClient:
        """A client of other node(s) over this client's connection pool (this client's to
        close), with this client's policy unless given."""
        return NodeClient(
            urls,
            retry=self.retry if retry is None else retry,
            timeout_s=self.timeout_s if timeout_s is None else timeout_s,
            max_body_bytes=self.max_body_bytes if max_body_bytes is None else max_body_bytes,
            sleep=self.sleep,
            session=self.session,
            health=self.health,
        )

    @property
    def url(self) -> str:
        """The node the next request goes to."""
        return self.urls[self._current]

    def fail_over(self) -> None:
        """Send the next requests to the next node that is not suspect (a no-op with one
        URL)."""
        self._current = self.health.choose(self.urls, self._current + 1)

    def _avoid_suspects(self) -> None:
        """Before a request: move off the current node if it is suspect and another is not."""
        if len(self.urls) > 1 and self.health.suspect(self.url):
            self._current = self.health.choose(self.urls, self._current)

    # ------------------------------------------------------------------------ one request

    async def send(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        content_type: str | None = None,
        timeout_s: float | None = None,
    ) -> Answer:
        """One request to the current node, no retry. Raises Unreachable (no answer, or
        502/504: then with the gateway's answer) or NodeError (an answer over the size bound)."""
        session = self.session
        url = self.url
        headers = {"Content-Type": content_type} if content_type else None
        total = timeout_s or self.timeout_s
        timeout = aiohttp.ClientTimeout(total=total, sock_connect=min(total, CONNECT_TIMEOUT_S))
        try:
            async with session.request(
                method, url + path, data=body, headers=headers, timeout=timeout
            ) as resp:
                raw = await read_bounded(resp, self.max_body_bytes)
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
        except ValueError as exc:
            raise NodeError(url, f"{url}: {method} {path}: {exc}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise Unreachable(url, f"{url}: {method} {path}: {detail}") from exc
        try:
            doc = json.loads(raw) if raw else None
        except (UnicodeDecodeError, ValueError):
            doc = None
        answer = Answer(url, status, doc, retry_after, raw)
        if status in (502, 504):
            raise Unreachable(
                url, f"{url}: {method} {path}: HTTP {status}", status=status, answer=answer
            )
        return answer

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        content_type: str | None = None,
        deadline: float | None = None,
        timeout_s: float | None = None,
    ) -> Answer:
        """One request, retried (503, no answer) with backoff and failover; the first other
        answer, whatever its status. NodeError once the attempts or the deadline run out (with
        the last answer, or from the last transport error)."""
        attempts = _Attempts(self, deadline)
        answer = await self._retried(attempts, method, path, body, content_type, timeout_s)
        if answer is None:
            raise attempts.exhausted(f"{method} {path} failed")
        return answer

    async def _retried(
        self,
        attempts: _Attempts,
        method: str,
        path: str,
        body: bytes | None,
        content_type: str | None,
        timeout_s: float | None = None,
    ) -> Answer | None:
        while True:
            self._avoid_suspects()
            url = self.url
            try:
                answer = await self.send(
                    method,
                    path,
                    body=body,
                    content_type=content_type,
                    timeout_s=self._timeout(attempts.deadline, base_s=timeout_s),
                )
            except Unreachable as exc:
                problem, retry_after = str(exc), None
                attempts.last_answer, attempts.last_error = exc.answer, exc
            else:
                if answer.status not in _RETRYABLE:
                    self.health.answered(url)
                    return answer
                problem = f"{answer.url}: {answer.error_text or 'node overloaded'} (503)"
                retry_after = answer.retry_after_s
                attempts.last_answer, attempts.last_error = answer, None
            self.health.failed(url, retry_after)
            self.fail_over()
            # Another node that answers gets the request at once; only when every node is
            # suspect does the client back off.
            elsewhere = self.url != url and not self.health.suspect(self.url)
            if not await attempts.again(problem, None if elsewhere else retry_after, elsewhere):
                return None

    def _timeout(
        self, deadline: float | None, extra_s: float = 0.0, base_s: float | None = None
    ) -> float:
        timeout = (self.timeout_s if base_s is None else base_s) + extra_s
        if deadline is not None:
            timeout = min(timeout, max(1.0, deadline - time.monotonic() + 1.0))
        return timeout

    async def get_json(
        self, path: str, *, deadline: float | None = None, timeout_s: float | None = None
    ) -> Any:
        """The JSON document of a 200 answer to GET ``path``; NodeError otherwise."""
        answer = await self.request("GET", path, deadline=deadline, timeout_s=timeout_s)
        if answer.status != 200:
            raise NodeError(
                answer.url,
                f"{answer.url}: GET {path} answered {answer.status}: {answer.error_text}",
                status=answer.status,
                error=answer.error_text,
                answer=answer,
            )
        if answer.doc is None:
            raise NodeError(
                answer.url, f"{answer.url}: GET {path}: the answer is not JSON", answer=answer
            )
        return answer.doc

    # --------------------------------------------------------------------------- reading

    async def status(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        doc = await self.get_json("/status", timeout_s=timeout_s)
        if not isinstance(doc, dict):
            raise NodeError(self.url, f"{self.url}: GET /status is not a JSON object")
        return doc

    async def consortium(self) -> Consortium:
        url = self.url
        return consortium_from_status(await self.status(), url)

    async def block(self, height: int, *, payload: bool = False, txs: str = "1") -> Any:
        """One block document (``block_to_json``) of GET /blocks/{height}."""
        return await self.get_json(f"/blocks/{height}?{_block_query(payload, txs)}")

    async def blocks(
        self,
        from_height: int,
        limit: int,
        *,
        payload: bool = False,
        txs: str = "1",
        timeout_s: float | None = None,
    ) -> BlocksPage:
        """Up to ``limit`` blocks from ``from_height`` (GET /blocks), as served documents."""
        query = f"from={from_height}&limit={limit}&{_block_query(payload, txs)}"
        doc = await self.get_json(f"/blocks?{query}", timeout_s=timeout_s)
        items = doc.get("blocks") if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise NodeError(self.url, f"{self.url}: GET /blocks did not answer a list of blocks")
        height = doc.get("height") if isinstance(doc, dict) else None
        nxt = doc.get("next") if isinstance(doc, dict) else None
        return BlocksPage(
            blocks=items,
            height=height if type(height) is int else None,
            next=nxt if type(nxt) is int else None,
        )

    async def poll_tx(self, tx_hex: str, wait_ms: int, *, timeout_s: float) -> Answer:
        """One GET /tx/{id}?wait_ms= long poll of the current node, no retry: its answer
        (200 with the transaction's status, 404 if it does not know it...). Unreachable as
        :meth:`send`."""
        return await self.send("GET", f"/tx/{tx_hex}?wait_ms={wait_ms}", timeout_s=timeout_s)

    # -------------------------------------------------------------------------- writing

    async def post_tx_body(
        self, body: bytes, *, deadline: float | None = None, timeout_s: float | None = None
    ) -> Answer:
        """POST /tx with a msgpack batch body as given (``node.api.msgpack_tx_body``), retried
        on 503 and connection errors; the node's first other answer (202 with its accepted
        and rejected lists, or a refusal). With ``NO_RETRY`` this is one attempt whose 503
        or missing answer is a NodeError carrying the answer or the transport error."""
        return await self.request(
            "POST", "/tx", body=body, content_type=MSGPACK, deadline=deadline, timeout_s=timeout_s
        )

    async def submit(self, envelopes: Sequence[TxEnvelope], *, deadline: float | None) -> str:
        """POST /tx until every transaction is accepted, resending just those a node turned
        away (typically a full mempool) within the same retry budget. Returns the URL of the
        node that accepted the last of them; NodeError if a node refuses them or the budget
        runs out."""
        pending = list(envelopes)
        attempts = _Attempts(self, deadline)
        while pending:
            answer = await self._retried(attempts, "POST", "/tx", msgpack_tx_body(pending), MSGPACK)
            if answer is None:
                break
            if answer.status != 202:
                raise NodeError(
                    answer.url,
                    f"{answer.url} refused the transactions ({answer.status}): {answer.error_text}",
                    status=answer.status,
                    error=answer.error_text,
                    answer=answer,
                )
            rejected = answer.doc.get("rejected") if isinstance(answer.doc, dict) else None
            if not rejected:
                return answer.url
            keep = {r["index"] for r in rejected if isinstance(r, dict) and "index" in r}
            pending = [env for i, env in enumerate(pending) if i in keep]
            problem = "; ".join(str(r.get("error")) for r in rejected[:3] if isinstance(r, dict))
            if not pending:
                raise NodeError(answer.url, f"{answer.url} rejected transactions: {problem}")
            if not await attempts.again(problem):
                break
        raise NodeError(
            self.url,
            f"{self.url}: {len(pending)} transaction(s) not accepted after {attempts.used} "
            f"attempts or the deadline: {attempts.last_problem}",
        )

    async def wait_committed(self, env: TxEnvelope, *, deadline: float) -> int:
        """Long-poll GET /tx/{id}?wait_ms= until the transaction is committed; its height. A
        node that does not know it (404: it restarted and lost its mempool) gets it again."""
        tx_hex = env.tx_id.hex()
        failures = 0
        resubmits = 0
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                raise NodeError(
                    self.url, f"transaction {tx_hex} not committed on {self.url} before the timeout"
                )
            wait_ms = min(WAIT_POLL_MS, remaining_ms)
            answer: Answer | None = None
            try:
                timeout_s = self._timeout(deadline, wait_ms / 1000)
                answer = await self.poll_tx(tx_hex, wait_ms, timeout_s=timeout_s)
                problem = f"{answer.url}: {answer.error_text or 'node overloaded'} (503)"
            except Unreachable as exc:
                problem = str(exc)
            if answer is None or answer.status == 503:
                failures += 1
                if failures >= self.retry.attempts:
                    raise NodeError(self.url, f"cannot query transaction {tx_hex}: {problem}")
                self.health.failed(self.url, None if answer is None else answer.retry_after_s)
                self.fail_over()
                await self._pause(failures - 1, deadline)
                continue
            failures = 0
            doc = answer.doc
            if answer.status == 200 and isinstance(doc, dict) and doc.get("status") == "committed":
                height = doc.get("height")
                if type(height) is not int:
                    raise NodeError(
                        answer.url, f"{answer.url}: committed transaction {tx_hex} has no height"
                    )
                return height
            if answer.status == 404:
                await self.submit([env], deadline=deadline)
                await self._pause(resubmits, deadline)  # pace a node that keeps forgetting it
                resubmits += 1
            elif answer.status != 200:
                raise NodeError(
                    answer.url,
                    f"{answer.url}: GET /tx/{tx_hex} answered {answer.status}: {answer.error_text}",
                    status=answer.status,
                    error=answer.error_text,
                    answer=answer,
                )

    async def _pause(self, retry: int, deadline: float) -> None:
        delay = self.retry.delay(retry, None)
        await self.sleep(max(0.0, min(delay, deadline - time.monotonic())))


def _block_query(payload: bool, txs: str) -> str:
    if txs not in TXS_FORMS:
        raise ValueError(f"txs must be one of {TXS_FORMS}, got {txs!r}")
    return f"txs={txs}" + ("&payload=1" if payload else "")


async def probe_status(url: str, timeout_s: float) -> dict[str, Any] | None:
    """One GET {url}/status, no retry: the status, or None if the node does not answer (yet)
    or answers badly."""
    async with NodeClient(url, retry=NO_RETRY, timeout_s=timeout_s, connections=1) as client:
        try:
            return await client.status()
        except NodeError:
            return None
