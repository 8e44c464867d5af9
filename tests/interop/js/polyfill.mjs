// Node 20 compatibility for js-libp2p 3.x: Promise.withResolvers and WebSocket.
//
// js-libp2p 3.x (@libp2p/ping, @libp2p/utils byteStream, ...) calls
// `Promise.withResolvers()`, which V8 only ships from Node 22. On Node 20 every
// ping and every length-prefixed read would throw "Promise.withResolvers is not
// a function". This module must be imported before any libp2p module (ES module
// imports are evaluated in order, so `import './polyfill.mjs'` as the first
// import of peer.mjs is enough).

if (typeof Promise.withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    enumerable: false,
    value: function withResolvers () {
      let resolve
      let reject
      const promise = new this((res, rej) => {
        resolve = res
        reject = rej
      })
      return { promise, resolve, reject }
    }
  })
}

// @libp2p/websockets dials with the global `WebSocket` (WHATWG API), which Node
// ships unflagged only from 22 (20 needs --experimental-websocket). On older
// Node, the `ws` package's client stands in: it is what @libp2p/websockets
// itself uses to listen, and it has the same API (addEventListener, binaryType,
// CloseEvent.wasClean). Node 22+ keeps its own WebSocket.
import { WebSocket as WsWebSocket } from 'ws'

if (typeof globalThis.WebSocket !== 'function') {
  globalThis.WebSocket = WsWebSocket
}
