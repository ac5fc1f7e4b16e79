// Xen Orchestra's client library (npm xen-api) moving a disk through xfer's VDI endpoints as
// Xen Orchestra does: putResource of a VHD read from a file stream of unknown length (the
// library then probes with an empty PUT, declares a 1 PiB Content-Length and cuts the
// connection once the data is sent), then getResource of the raw export into a file.
// Prints one JSON object on stdout.
// Usage: node transfer.mjs URL PASSWORD VHD_FILE VIRTUAL_SIZE OUT_FILE
import { createReadStream, createWriteStream } from 'node:fs'
import { pipeline } from 'node:stream/promises'
import { report } from './report.mjs'

const [url, password, vhdPath, virtualSize, outPath] = process.argv.slice(2)

await report({ url, auth: { user: 'root', password } }, async (xapi, out) => {
  await xapi.connect()
  const [sr] = await xapi.call('SR.get_all')
  const ref = await xapi.call('VDI.create', {
    SR: sr,
    virtual_size: Number(virtualSize),
    name_label: 'imported by xen-api',
    type: 'user',
    sharable: false,
    read_only: false,
    other_config: {},
  })
  out.vdi = ref
  const body = createReadStream(vhdPath) // no length: the library's 1 PiB workaround
  out.importResult = await xapi.putResource(body, '/import_raw_vdi/', {
    query: { format: 'vhd', vdi: ref },
  })
  const response = await xapi.getResource('/export_raw_vdi/', {
    query: { format: 'raw', vdi: ref },
  })
  out.exportHeaders = response.headers
  await pipeline(response.body, createWriteStream(outPath))
  out.exportResult = await response.task
})
