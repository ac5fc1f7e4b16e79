// What the scripts here share: run a body with a xen-api client, then print what it gathered
// as one JSON object on stdout (a failure as its `error` field) and exit.
import { createClient } from 'xen-api'

export async function report (options, body) {
  const xapi = createClient(options)
  const out = {}
  try {
    await body(xapi, out)
  } catch (error) {
    out.error = String(error?.stack ?? error)
  } finally {
    await xapi.disconnect()
    process.stdout.write(JSON.stringify(out) + '\n')
    process.exit(0)
  }
}
