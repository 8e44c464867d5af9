// Node 20 compatibility for js-libp2p 3.x.
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
