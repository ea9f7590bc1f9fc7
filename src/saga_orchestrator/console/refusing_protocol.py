"""uvicorn's httptools protocol, answering a known flood from its parser callbacks
(:class:`~saga_orchestrator.api.wire_refusal.WireRefusals` decides and writes the answer).

It takes over at three callbacks and hands everything else to uvicorn: when a request's
headers are complete it asks for an answer (only while nothing of the connection is still
being answered, so answers stay in order); the body of an answered request is dropped as it
arrives; when the message is complete the answer is written, and the connection is closed
(``Connection: close``, HTTP/1.0) or its keep-alive timer armed, as uvicorn does after a
response. A request that gets no answer here is uvicorn's, untouched.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from saga_orchestrator.api.wire_refusal import WireRefusals


def refusing_protocol(refusals: WireRefusals) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, answering the requests ``refusals`` answers itself."""

    class RefusingProtocol(HttpToolsProtocol):
        _answer: bytes | None = None
        _keep_alive = True

        def on_headers_complete(self) -> None:
            self._answer = None
            answering = self.cycle is None or self.cycle.response_complete
            if answering and not self.pipeline and not self.expect_100_continue:
                self._answer = self._refusal()
            if self._answer is None:
                super().on_headers_complete()

        def _refusal(self) -> bytes | None:
            parser = self.parser
            if parser.should_upgrade():
                return None
            self._keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
            return refusals.answer(
                parser.get_method(),
                self.url,
                self.headers,
                self.server_state.default_headers,
                keep_alive=self._keep_alive,
            )

        def on_body(self, body: bytes) -> None:
            if self._answer is None:
                super().on_body(body)

        def on_message_complete(self) -> None:
            answer = self._answer
            if answer is None:
                super().on_message_complete()
                return
            self._answer = None
            self.transport.write(answer)
            self.server_state.total_requests += 1
            if not self._keep_alive:
                self.transport.close()
            elif not self.transport.is_closing():
                self._unset_keepalive_if_required()  # one already set by a request before
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )

    return RefusingProtocol
