function (doc) {
  if (doc.type === 'task' && doc.state === 'running') {
    emit(doc.host, {record: doc.record, name: doc.name, platform: doc.platform,
                    key: doc.key || null, started: doc.started});
  }
}
