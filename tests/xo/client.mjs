// Xen Orchestra's client library (npm xen-api) against xfer: connect, list hosts and VDIs,
// watch events, create a VDI and wait until the event watcher shows it, destroy it and wait
// until it is gone. Prints one JSON object on stdout.
// Usage: node client.mjs URL PASSWORD [TRANSPORT (auto, json-rpc or xml-rpc)]
import { report } from './report.mjs'

const [url, password, transport = 'auto'] = process.argv.slice(2)
const WAIT_MS = 20e3

const waitFor = async (what, predicate) => {
  const end = Date.now() + WAIT_MS
  while (!predicate()) {
    if (Date.now() > end) throw new Error('timed out waiting for ' + what)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

await report({ url, auth: { user: 'root', password }, transport }, async (xapi, out) => {
  await xapi.connect()
  out.status = xapi.status
  out.pool = { ref: xapi.pool.$ref, master: xapi.pool.master, default_SR: xapi.pool.default_SR }
  out.hosts = await xapi.call('host.get_all_records')
  out.vdis = Object.keys(await xapi.call('VDI.get_all_records'))
  await xapi.objectsFetched
  const objects = () => Object.values(xapi.objects.all)
  out.types = [...new Set(objects().map(o => o.$type))].sort()
  const sr = objects().find(o => o.$type === 'SR')
  const ref = await xapi.call('VDI.create', {
    SR: sr.$ref,
    virtual_size: 4 * 1024 * 1024,
    name_label: 'from xen-api',
    type: 'user',
    sharable: false,
    read_only: false,
    other_config: {},
  })
  out.created = ref
  await waitFor('the new VDI', () => xapi.getObjectByRef(ref, undefined) !== undefined)
  const vdi = xapi.getObjectByRef(ref)
  out.seen = { name_label: vdi.name_label, SR: vdi.SR, virtual_size: vdi.virtual_size, type: vdi.$type }
  await xapi.call('VDI.destroy', ref)
  await waitFor('the VDI gone', () => xapi.getObjectByRef(ref, undefined) === undefined)
  out.gone = true
  out.watchEventsError = xapi.watchEventsError === undefined ? null : String(xapi.watchEventsError)
})
